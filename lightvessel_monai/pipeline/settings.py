"""The bundle's on/off switches, parsed once into typed values that the config reads.

``python -m monai.bundle run ... --amp false`` hands the config the *string* ``"false"``, which Python takes as
true. ``train.json`` builds one :class:`RunFlags` from the raw keys and every expression reads ``@flags.amp``,
``@flags.use_teacher``, ... instead of parsing the raw value where it is used::

    "flags": {"_target_": "lightvessel_monai.pipeline.settings.RunFlags", "amp": "@amp", "resume": "@resume", ...}

Also the pre-flight checks of count-like, rate-like and folder keys (one-line errors naming the key).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lightvessel_monai.errors import ConfigKeyError

__all__ = ["RunFlags", "as_bool", "check_positive_ints", "check_positive_numbers", "check_writable"]


_TRUE = ("true", "True", "1", 1, True)
_FALSE = ("false", "False", "0", 0, False)


def as_bool(value: Any, key: str) -> bool:
    """A boolean config value, also when the command line gave it as a string (``--amp false``).

    ``python -m monai.bundle run ... --progress_bar false`` passes the string ``"false"``, which Python would take
    as true. Accepted: ``true``/``false``/``True``/``False``/``0``/``1`` (strings, ints or bools); anything else is a
    one-line :class:`~lightvessel_monai.errors.ConfigKeyError` naming ``key``.
    """
    if isinstance(value, str):
        value = value.strip()
    for accepted, result in ((_TRUE, True), (_FALSE, False)):
        # bool/int/str compare by type first, so 1.0 or "yes" never match
        if any(type(value) is type(a) and value == a for a in accepted):
            return result
    raise ConfigKeyError(f"config key '{key}' must be a boolean (true, false, True, False, 0 or 1), got {value!r}")


@dataclass(frozen=True)
class RunFlags:
    """Booleans of a training run; each is given as a bool, ``0``/``1`` or ``"true"``/``"false"`` (any value
    :func:`as_bool` accepts). A bad value is a one-line
    :class:`~lightvessel_monai.errors.ConfigKeyError` naming its key."""

    amp: bool = False
    resume: bool = True
    use_teacher: bool = True
    progress_bar: bool = True
    cosine_lr: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            # frozen: the parsed value replaces the raw one once, here
            object.__setattr__(self, field.name, as_bool(getattr(self, field.name), field.name))


def check_positive_ints(values: Mapping[str, Any], minimum: Mapping[str, int] | None = None) -> None:
    """Pre-flight check of count-like config keys (epochs, intervals, batch sizes): whole numbers, not below minimum.

    ``values`` maps key -> value; the minimum is 1 unless ``minimum`` says otherwise (e.g. 0 for ``num_workers``).
    A list value (``patch_size``) is checked element by element. Booleans and floats are refused: ``--max_epochs
    2.5`` or ``abc`` is a one-line :class:`ConfigKeyError` naming the key, not a traceback minutes later.
    """
    for key, value in values.items():
        low = (minimum or {}).get(key, 1)
        items = value if isinstance(value, (list, tuple)) else [value]
        ok = bool(items) and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in items)
        if not ok:
            kind = "a list of whole numbers" if isinstance(value, (list, tuple)) else "a whole number"
            raise ConfigKeyError(f"config key '{key}' must be {kind} >= {low}, got {value!r}")


def check_positive_numbers(values: Mapping[str, Any]) -> None:
    """Pre-flight check of rate-like config keys (learning rates): real numbers > 0; a one-line error otherwise."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
            raise ConfigKeyError(f"config key '{key}' must be a number > 0, got {value!r}")


def check_writable(folders: Mapping[str, str | os.PathLike]) -> None:
    """Check, before anything is trained, that each output folder can be written: a one-line error otherwise.

    A probe file is written (and deleted) in the folder, or, when the folder does not exist yet, in its nearest
    existing parent, so the check itself creates nothing. A read-only or full folder, or a path under a regular
    file, is a :class:`ConfigKeyError` naming the key and the folder instead of an ``OSError`` traceback after
    the first epoch.
    """
    for key, folder in folders.items():
        path = Path(folder).absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file")
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".write_probe_") as probe:
                probe.write(b"probe")
                probe.flush()
        except OSError as err:
            reason = str(err) if isinstance(err, NotADirectoryError) else (err.strerror or type(err).__name__)
            raise ConfigKeyError(f"config key '{key}': cannot write to {path} ({reason})") from None
