"""Learning curves: validation metric and loss terms against training iteration, as CSV; where a curve plateaus."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

from lightvessel_monai.utils import atomic_write_text, csv_text

__all__ = ["append_losses", "plateau_iteration", "read_curve", "read_losses", "write_curve", "write_losses"]

CURVE_COLUMNS = ("iteration", "epoch", "metric")
LOSS_INDEX = ("iteration", "epoch")

LossRow = tuple[int, int, dict[str, float]]


def write_curve(path: str | os.PathLike, points: Sequence[tuple[int, int, float]]) -> str:
    """Write ``(iteration, epoch, metric)`` rows to ``path`` as CSV, atomically (temporary file, then rename)."""
    rows = [dict(zip(CURVE_COLUMNS, (int(i), int(e), f"{float(m):.6f}"), strict=True)) for i, e, m in points]
    return atomic_write_text(path, csv_text(rows, CURVE_COLUMNS))


def read_curve(path: str | os.PathLike) -> list[tuple[int, int, float]]:
    """The rows of a curve written by :func:`write_curve` (``[]`` when the file does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [(int(r["iteration"]), int(r["epoch"]), float(r["metric"])) for r in csv.DictReader(f)]


def plateau_iteration(
    iterations: Sequence[int], values: Sequence[float], tolerance: float = 0.005, fraction: float = 0.25
) -> int | None:
    """The first recorded iteration ``b`` after which the curve no longer improves, or ``None`` if none is shown.

    ``b`` qualifies when the best value of the whole recorded run exceeds the best value up to ``b`` by less than
    ``tolerance`` (0.5 Dice points by default), and the run went on for at least ``fraction`` of its length past
    ``b`` (to ``b / (1 - fraction)``), so that a stretch of at least that length shows no gain. Best-so-far values
    are compared, so a noisy dip neither creates nor hides a plateau.
    """
    if len(iterations) != len(values):
        raise ValueError(f"plateau_iteration: {len(iterations)} iterations but {len(values)} values")
    points = sorted(zip(iterations, values, strict=True))
    if not points:
        return None
    best_all, last = max(v for _, v in points), points[-1][0]
    best_so_far = float("-inf")
    for b, value in points:
        best_so_far = max(best_so_far, value)
        if best_all - best_so_far < tolerance and last >= b / (1.0 - fraction):
            return int(b)
    return None


def _loss_lines(terms: Sequence[str], rows: Sequence[LossRow]) -> str:
    """Newline-terminated CSV lines of ``(iteration, epoch, {term: value})`` rows; a missing term is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for iteration, epoch, values in rows:
        cells = [repr(float(values[t])) if t in values else "" for t in terms]
        writer.writerow([int(iteration), int(epoch), *cells])
    return buffer.getvalue()


def write_losses(path: str | os.PathLike, terms: Sequence[str], rows: Sequence[LossRow]) -> str:
    """Write loss rows as CSV (``iteration, epoch, <term>, ...``) to ``path``, atomically (temporary file, rename).

    Values are written with ``repr`` (every digit of a float), so they read back exactly.
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([*LOSS_INDEX, *terms])
    return atomic_write_text(path, buffer.getvalue() + _loss_lines(terms, rows))


def append_losses(path: str | os.PathLike, terms: Sequence[str], rows: Sequence[LossRow]) -> None:
    """Append rows to a loss CSV written by :func:`write_losses` with the same ``terms`` (one ``write``, flushed).

    Appending costs one small write per call whatever the file's length. A process killed inside the write can at
    worst leave an unterminated last line, which :func:`read_losses` drops.
    """
    if rows:
        with open(path, "a", newline="") as f:
            f.write(_loss_lines(terms, rows))


def read_losses(path: str | os.PathLike) -> tuple[list[str], list[LossRow]]:
    """``(terms, rows)`` of a loss CSV (``([], [])`` when the file does not exist).

    A last line without its newline (a write cut short by a kill) and rows that do not parse are skipped; an empty
    cell means the term was not logged at that iteration and is absent from the row's dict.
    """
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    complete = lines[:-1]  # the text after the last newline is empty, or a torn line
    if not complete:
        return [], []
    header = next(csv.reader([complete[0]]))
    if tuple(header[: len(LOSS_INDEX)]) != LOSS_INDEX:
        raise ValueError(f"{path} is not a loss CSV: its header is {header}")
    terms = header[len(LOSS_INDEX) :]
    rows: list[LossRow] = []
    for cells in csv.reader(complete[1:]):
        if len(cells) != len(header):
            continue
        try:
            values = {t: float(c) for t, c in zip(terms, cells[len(LOSS_INDEX) :], strict=True) if c != ""}
            rows.append((int(cells[0]), int(cells[1]), values))
        except ValueError:
            continue
    return terms, rows
