"""Small helpers used by the bundle configs and the engines."""

from __future__ import annotations

import csv
import io
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from lightvessel_monai.errors import CheckpointMismatchError, ConfigKeyError

__all__ = [
    "as_bool",
    "check_finite_state",
    "check_positive_ints",
    "check_positive_numbers",
    "check_writable",
    "atomic_write_text",
    "replace_folder",
    "csv_text",
    "load_state_dict_checked",
    "load_weights",
    "read_state_dict",
    "loss_terms",
    "find_bundle_root",
]


def _unwrap_state_dict(obj: Any) -> Mapping[str, torch.Tensor] | None:
    """A plain state dict, or a dict with one nested state dict (``{"model": sd}``) as some savers write."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping) and len(obj) == 1:
        return _unwrap_state_dict(next(iter(obj.values())))
    return None


def load_weights(path: str | os.PathLike, what: str = "network") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a one-line error naming the file.

    A file that holds pickled Python objects (a whole module, a callable) is refused by the safe loader and nothing
    in it runs. Torch's own message would then suggest ``weights_only=False``, which would run that code; the
    message here says what the file is instead and never suggests the unsafe load.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointMismatchError(
            f"{what} checkpoint {path} is not a plain state dict: it holds pickled Python objects, which are never "
            "loaded; save model.state_dict() with torch.save instead"
        ) from None
    except Exception as err:  # truncated file or not a torch file
        raise CheckpointMismatchError(f"{what} checkpoint {path} cannot be read: {str(err).splitlines()[0]}") from None


def load_state_dict_checked(network: nn.Module, path: str | os.PathLike, what: str = "network") -> nn.Module:
    """Load a state-dict file into ``network`` with ``weights_only=True``, or fail with one line.

    The message names the file and says how it differs from the network: missing/unexpected keys
    or tensor shapes, so a checkpoint of another architecture is caught before training.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointMismatchError(f"{what} checkpoint {path} does not exist")
    state = read_state_dict(path, what)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointMismatchError(
            f"{what} checkpoint {path} does not fit {type(network).__name__}: {'; '.join(problems)}"
        )
    network.load_state_dict(state)
    return network


def read_state_dict(path: str | os.PathLike, what: str = "network") -> Mapping[str, torch.Tensor]:
    """The state dict in ``path`` (safe load), checked to be tensors only and finite; one-line errors otherwise."""
    state = _unwrap_state_dict(load_weights(path, what))
    if state is None:
        raise CheckpointMismatchError(f"{what} checkpoint {path} is not a state dict of tensors")
    check_finite_state(state, path, what)
    return state


def check_finite_state(state: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str = "network") -> None:
    """A one-line :class:`CheckpointMismatchError` when a floating tensor of ``state`` holds NaN or Inf.

    A diverged run writes such weights; loading (or caching) them would make every prediction NaN.
    """
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatchError(
            f"{what} checkpoint {path} holds NaN or infinite values in {len(bad)} of {len(state)} tensors "
            f"(e.g. {', '.join(bad[:3])}): it comes from a diverged run"
        )


def loss_terms(output: Any) -> dict[str, float]:
    """``output_transform`` for StatsHandler/TensorBoardStatsHandler: every ``loss*`` entry as a float."""
    item = output[0] if isinstance(output, list) else output
    return {
        k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
        for k, v in item.items()
        if k.startswith("loss")
    }


def find_bundle_root(default: str = ".") -> str:
    """``bundle/`` when run from the repository root, else ``default`` (the bundle's own directory)."""
    candidate = Path("bundle")
    if (candidate / "configs" / "metadata.json").is_file():
        return str(candidate)
    return default


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


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> str:
    """Call ``write(f)`` on a temporary binary file in ``path``'s folder, fsync it, then ``os.replace`` it to ``path``.

    A process killed mid-write leaves the previous file whole (and at most a hidden ``.<name>.*.tmp``, never a
    truncated ``path``); readers see the old content or the new, never a mix. The file gets the permissions of a
    plainly created one (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def replace_folder(staged: str | os.PathLike, target: str | os.PathLike, trash: str | os.PathLike) -> str:
    """Move the finished folder ``staged`` to ``target`` by renames on one file system; a folder already at ``target``
    is first moved to ``trash`` (for the caller to delete). Readers see the old folder or the new one, whole."""
    target = Path(target)
    if target.exists():
        os.replace(target, trash)
    os.replace(staged, target)
    return str(target)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """:func:`atomic_write` of ``text``, UTF-8."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, and one line per row (cells formatted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def csv_text(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None, restval: Any = "") -> str:
    """``rows`` as CSV text with a header (for :func:`atomic_write_text`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames or rows[0]), restval=restval)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
