"""Learning curves: validation metric against training iteration, stored as CSV, and where a curve plateaus."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from lightvessel_monai.utils import atomic_write_text, csv_text

__all__ = ["plateau_iteration", "read_curve", "write_curve"]

CURVE_COLUMNS = ("iteration", "epoch", "metric")


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
