"""Writing files so that a killed process never leaves half a file: every atomic write of the package goes
through :func:`atomic_write` (this module is the one place that renames files into place), and the CSV and
Markdown text that the reports write."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "replace_folder", "atomic_write_text", "markdown_table", "csv_text"]


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
