"""LearningCurveHandler: validation metric and loss terms against training iteration, as CSV and PNG."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine, Events

from lightvessel_monai.curves import (
    append_losses,
    plateau_iteration,
    read_curve,
    read_losses,
    write_curve,
    write_losses,
)
from lightvessel_monai.utils import loss_terms

__all__ = ["LearningCurveHandler"]

logger = logging.getLogger(__name__)


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
    ``loss`` and each term, as :class:`StatsHandler` logs them) to ``<name>_losses.csv``. Appending one line costs
    the same however long the run, and a killed run keeps every row written before the kill (a torn last line is
    dropped when read). A fresh run starts a fresh file; a resumed run keeps the rows up to the iteration it resumes
    from (rewritten once, atomically); a term that appears later extends the header (one atomic rewrite). At the end
    ``<name>_losses.png`` shows every term (log axis) and the validation metric against the iteration.

    Args:
        evaluator: the ``SupervisedEvaluator`` run by the trainer's ``ValidationHandler``.
        output_dir: where the CSV and PNG go.
        name: file prefix and plot label, e.g. ``"student"`` or ``"teacher"``.
        metric_name: the evaluator metric to record; default its key metric.
        enabled: ``False`` attaches nothing (e.g. on every rank but 0 of a multi-GPU run).
        record_losses: also record the loss terms per iteration and draw ``<name>_losses.png``.
        loss_transform: ``engine.state.output -> {term: float}``; default :func:`lightvessel_monai.utils.loss_terms`.
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
        from lightvessel_monai.figures import learning_curve_plot

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
        from lightvessel_monai.figures import loss_curve_plot

        series = {
            term: ([r[0] for r in rows if term in r[2]], [r[2][term] for r in rows if term in r[2]]) for term in columns
        }
        validation = ([p[0] for p in self.points], [p[2] for p in self.points]) if self.points else None
        metric = self.metric_name or getattr(self.evaluator.state, "key_metric_name", None) or "validation metric"
        loss_curve_plot(series, validation, self.losses_png_path, title=f"{self.name} training", metric_label=metric)
        logger.info(f"{self.name} loss terms: {self.losses_png_path}")
