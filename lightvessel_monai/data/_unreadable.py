"""What the pre-flight readers raise, shared by the format readers and the DICOM series checks."""

from __future__ import annotations

__all__ = ["DICOM_SUFFIXES", "Unreadable", "one_line"]

DICOM_SUFFIXES = (".dcm", ".dicom")


class Unreadable(Exception):
    """Raised by the readers; ``check_datalist`` turns it into a :class:`DataError` naming the entry."""


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
