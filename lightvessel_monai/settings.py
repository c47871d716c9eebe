"""The bundle's on/off switches, parsed once into typed values that the config reads.

``python -m monai.bundle run ... --amp false`` hands the config the *string* ``"false"``, which Python takes as
true. ``train.json`` builds one :class:`RunFlags` from the raw keys and every expression reads ``@flags.amp``,
``@flags.use_teacher``, ... instead of parsing the raw value where it is used::

    "flags": {"_target_": "lightvessel_monai.settings.RunFlags", "amp": "@amp", "resume": "@resume", ...}
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lightvessel_monai.utils import as_bool

__all__ = ["RunFlags"]


@dataclass(frozen=True)
class RunFlags:
    """Booleans of a training run; each is given as a bool, ``0``/``1`` or ``"true"``/``"false"`` (any case
    :func:`~lightvessel_monai.utils.as_bool` accepts). A bad value is a one-line
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
