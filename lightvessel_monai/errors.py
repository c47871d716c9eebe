"""User-facing errors that are reported as one line, with a non-zero exit.

``python -m monai.bundle run`` wraps every failure of a config expression in several layers of
tracebacks. For the errors a user can fix (bad data, a bad config key, a wrong checkpoint) that noise
hides the message, so the bundle configs' first ``initialize`` step calls :func:`install_excepthook`, which
prints only the first :class:`LightVesselError` found in the exception chain. Any other exception keeps
Python's usual traceback. Importing the package installs nothing (a host such as MONAI Label keeps its hook).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType

__all__ = [
    "LightVesselError",
    "DataError",
    "ConfigKeyError",
    "CheckpointMismatchError",
    "TrainingDivergedError",
    "install_excepthook",
    "exit_code_of",
    "find_user_error",
]


class LightVesselError(Exception):
    """Base class of the errors that a user can fix; the message names the file or key at fault.

    The message is always one line: a line break inside it (a key or file name that holds one, a reader's
    multi-line complaint) is shown escaped, as ``\\n``.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message).replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(text, *args)


class DataError(LightVesselError, ValueError):
    """A datalist entry or a data file is missing, unreadable or inconsistent."""


class ConfigKeyError(LightVesselError, KeyError):
    """A config key or a module path named in a config does not exist or has a bad value."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointMismatchError(LightVesselError, RuntimeError):
    """A checkpoint does not fit the network it is loaded into."""


class TrainingDivergedError(LightVesselError, RuntimeError):
    """A loss term became NaN or infinite: training stopped, the last good checkpoints are kept."""


def find_user_error(exc: BaseException | None) -> LightVesselError | None:
    """Walk ``__cause__``/``__context__`` and return the first :class:`LightVesselError`, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LightVesselError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_code_of(call: Callable[[], object]) -> int:
    """Run a CLI's work: 0 when it returns, 1 with a one-line message for a :class:`LightVesselError` anywhere in the
    exception chain; any other exception keeps its traceback."""
    try:
        call()
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"lightvessel_monai error: {user_error}", file=sys.stderr)
        return 1
    return 0


_previous_hook = sys.excepthook


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    user_error = find_user_error(exc)
    if user_error is None:
        _previous_hook(exc_type, exc, tb)
        return
    sys.stderr.write(f"lightvessel_monai error: {user_error}\n")
    sys.stderr.flush()


def install_excepthook() -> None:
    """Route uncaught :class:`LightVesselError` to a one-line message (exit status stays 1)."""
    if sys.excepthook is not excepthook:
        global _previous_hook
        _previous_hook = sys.excepthook
        sys.excepthook = excepthook
