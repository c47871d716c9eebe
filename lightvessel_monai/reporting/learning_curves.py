"""Learning curves: the validation metric and the loss terms against the training iteration.

:class:`LearningCurveHandler` records them during a run as CSV (``write_curve``, ``write_losses``) and draws
them as PNG (``learning_curve_plot``, ``loss_curve_plot``); ``plateau_iteration`` says where a curve stops
rising; ``loss_terms`` is the ``output_transform`` that picks the loss terms of a step's output."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from lightvessel_monai.files import atomic_write_text, csv_text

__all__ = [
    "LearningCurveHandler",
    "append_losses",
    "learning_curve_plot",
    "loss_curve_plot",
    "loss_terms",
    "plateau_iteration",
    "read_curve",
    "read_losses",
    "write_curve",
    "write_losses",
]

logger = logging.getLogger(__name__)

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


def loss_terms(output: Any) -> dict[str, float]:
    """``output_transform`` for StatsHandler/TensorBoardStatsHandler: every ``loss*`` entry as a float."""
    item = output[0] if isinstance(output, list) else output
    return {
        k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
        for k, v in item.items()
        if k.startswith("loss")
    }


class LearningCurveHandler:
    """Record the evaluator's key metric after every validation and the loss terms after every iteration.

    Attach it to the *trainer*, after its ``ValidationHandler`` (ignite runs handlers of one event in order of
    attachment, so the validation of the epoch has finished when this handler reads it). After every validation
    it rewrites ``<output_dir>/<name>_curve.csv`` (``iteration, epoch, metric``, atomically) and at the end of the
    run ``<name>_curve.png``. A resumed run keeps the points recorded before the interruption (re-read from the CSV);
    for that it must also come after the ``ResumeCheckpoint`` handler, whose ``STARTED`` handler restores the
    iteration it reads (``train.json`` lists it last).

    With ``record_losses`` it also appends, after every iteration, one row ``iteration, epoch, <term>, ...`` of the
    trainer's loss terms (``loss_transform`` of ``engine.state.output``: by default every ``loss*`` entry, the total
    ``loss`` and each term, as :class:`monai.handlers.StatsHandler` logs them) to ``<name>_losses.csv``. Appending one
    line costs the same however long the run, and a killed run keeps every row written before the kill (a torn last line
    is dropped when read). A fresh run starts a fresh file; a resumed run keeps the rows up to the iteration it resumes
    from (rewritten once, atomically); a term that appears later extends the header (one atomic rewrite). At the end
    ``<name>_losses.png`` shows every term (log axis) and the validation metric against the iteration.

    Args:
        evaluator: the ``SupervisedEvaluator`` run by the trainer's ``ValidationHandler``.
        output_dir: where the CSV and PNG go.
        name: file prefix and plot label, e.g. ``"student"`` or ``"teacher"``.
        metric_name: the evaluator metric to record; default its key metric.
        enabled: ``False`` attaches nothing (e.g. on every rank but 0 of a multi-GPU run).
        record_losses: also record the loss terms per iteration and draw ``<name>_losses.png``.
        loss_transform: ``engine.state.output -> {term: float}``; default :func:`loss_terms`.
    """

    def __init__(
        self,
        evaluator: Any,
        output_dir: str,
        name: str = "student",
        metric_name: str | None = None,
        enabled: bool = True,
        record_losses: bool = True,
        loss_transform: Callable[[Any], Mapping[str, float]] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.output_dir = str(output_dir)
        self.name = name
        self.metric_name = metric_name
        self.enabled = bool(enabled)
        self.record_losses = bool(record_losses)
        self.loss_transform = loss_transform or loss_terms
        self.points: list[tuple[int, int, float]] = []
        self.loss_columns: list[str] = []

    @property
    def csv_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_curve.csv")

    @property
    def png_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_curve.png")

    @property
    def losses_csv_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_losses.csv")

    @property
    def losses_png_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_losses.png")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        if self.record_losses:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_losses)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _started(self, engine: Engine) -> None:
        # a fresh run starts a fresh curve; a resumed one keeps the points up to where it resumes
        start = engine.state.iteration
        self.points = [p for p in read_curve(self.csv_path) if p[0] <= start] if start > 0 else []
        if not self.record_losses:
            return
        self.loss_columns = []
        if start > 0:
            columns, rows = read_losses(self.losses_csv_path)
            if columns:
                self.loss_columns = columns
                write_losses(self.losses_csv_path, columns, [r for r in rows if r[0] <= start])
        elif os.path.isfile(self.losses_csv_path):
            os.remove(self.losses_csv_path)  # an earlier run's rows must not be mixed into this run's

    def _record_losses(self, engine: Engine) -> None:
        values = {str(k): float(v) for k, v in self.loss_transform(engine.state.output).items()}
        if not values:
            return
        row = (engine.state.iteration, engine.state.epoch, values)
        new = sorted((k for k in values if k not in self.loss_columns), key=lambda k: k != "loss")  # total first
        if new or not os.path.isfile(self.losses_csv_path):
            # first row, or a term logged from now on: one atomic rewrite with the wider header
            _, rows = read_losses(self.losses_csv_path) if self.loss_columns else ([], [])
            self.loss_columns = [*self.loss_columns, *new]
            write_losses(self.losses_csv_path, self.loss_columns, [*rows, row])
        else:
            append_losses(self.losses_csv_path, self.loss_columns, [row])

    def _record(self, engine: Engine) -> None:
        state = self.evaluator.state
        if state.epoch != engine.state.epoch:  # no validation in this epoch
            return
        key = self.metric_name or state.key_metric_name
        if key not in state.metrics:
            return
        self.points.append((engine.state.iteration, engine.state.epoch, float(state.metrics[key])))
        write_curve(self.csv_path, self.points)

    def _finish(self, engine: Engine) -> None:
        if not self.points or self.points[-1][1] != engine.state.epoch:
            self._record(engine)  # the validation after the last epoch (FinalValidationHandler), if there was one
        if self.record_losses:
            self._plot_losses()
        if not self.points:
            return

        iterations, values = [p[0] for p in self.points], [p[2] for p in self.points]
        learning_curve_plot({self.name: (iterations, values)}, self.png_path)
        plateau = plateau_iteration(iterations, values)
        logger.info(
            f"{self.name} learning curve: best {max(values):.4f} at iteration {iterations[values.index(max(values))]}; "
            f"plateau {'at iteration ' + str(plateau) if plateau else 'not reached'} ({self.png_path})"
        )

    def _plot_losses(self) -> None:
        columns, rows = read_losses(self.losses_csv_path)
        if not rows:
            return

        series = {
            term: ([r[0] for r in rows if term in r[2]], [r[2][term] for r in rows if term in r[2]]) for term in columns
        }
        validation = ([p[0] for p in self.points], [p[2] for p in self.points]) if self.points else None
        metric = self.metric_name or getattr(self.evaluator.state, "key_metric_name", None) or "validation metric"
        loss_curve_plot(series, validation, self.losses_png_path, title=f"{self.name} training", metric_label=metric)
        logger.info(f"{self.name} loss terms: {self.losses_png_path}")


def learning_curve_plot(
    curves: Mapping[str, tuple[list[int], list[float]]],
    path: str,
    ylabel: str = "validation Dice",
    title: str = "Learning curves",
) -> str:
    """Plot ``{label: (iterations, values)}`` as lines with markers against the training iteration; write a PNG."""
    from lightvessel_monai.reporting.figures import plt, save_figure  # matplotlib only when a picture is drawn

    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=120)
    for label, (iterations, values) in curves.items():
        ax.plot(iterations, values, marker="o", markersize=3, label=f"{label} (best {max(values):.4f})")
    ax.set_xlabel("training iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def _smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` finite points (NaN where the window holds none)."""
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    sums[window:], counts[window:] = sums[window:] - sums[:-window], counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def loss_curve_plot(
    losses: Mapping[str, tuple[list[int], list[float]]],
    validation: tuple[list[int], list[float]] | None,
    path: str,
    title: str = "",
    metric_label: str = "validation Dice",
) -> str:
    """Two panels over the training iteration: every loss term (``{term: (iterations, values)}``), and the
    validation metric (``(iterations, values)``, or ``None``). Write a PNG atomically.

    The loss axis is logarithmic; when a term takes values <= 0 (an adversarial WGAN term) it is symmetric-log
    (linear around 0). With many iterations each term is drawn faintly with its moving average (1 % of the run) on top.
    """
    from lightvessel_monai.reporting.figures import plt, save_figure

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8.0, 6.4), dpi=110, sharex=True, height_ratios=[3, 2])
    finite = np.concatenate([np.asarray(v, dtype=float) for _, v in losses.values()] or [np.zeros(0)])
    finite = finite[np.isfinite(finite)]
    for i, (term, (iterations, values)) in enumerate(losses.items()):
        x, y = np.asarray(iterations), np.asarray(values, dtype=float)
        color = f"C{i % 10}"
        window = len(y) // 100
        if window > 1:
            top.plot(x, y, color=color, alpha=0.25, linewidth=0.6)
            top.plot(x, _smoothed(y, window), color=color, linewidth=1.2, label=term)
        else:
            top.plot(x, y, color=color, linewidth=1.0, marker="." if len(y) < 50 else None, label=term)
    if finite.size and finite.min() > 0:
        top.set_yscale("log")
    elif finite.size:
        nonzero = np.abs(finite[finite != 0])
        top.set_yscale("symlog", linthresh=float(np.percentile(nonzero, 10)) if nonzero.size else 1.0)
    top.set_ylabel("loss term")
    top.grid(alpha=0.3, which="both")
    if losses:
        top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    if validation and validation[0]:
        iterations, values = validation
        bottom.plot(iterations, values, marker="o", markersize=3, color="C3", label=f"best {max(values):.4f}")
        bottom.legend(loc="lower right", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no validation", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel(metric_label)
    bottom.set_xlabel("training iteration")
    bottom.grid(alpha=0.3)
    if title:
        top.set_title(title)
    return save_figure(fig, path)
