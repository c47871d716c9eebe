"""LearningCurveHandler: validation metric against training iteration, as CSV and PNG, for teacher and student."""

from __future__ import annotations

import logging
import os
from typing import Any

from ignite.engine import Engine, Events

from lightvessel_monai.curves import plateau_iteration, read_curve, write_curve

__all__ = ["LearningCurveHandler"]

logger = logging.getLogger(__name__)


class LearningCurveHandler:
    """Record the evaluator's key metric after every validation, against the trainer's iteration.

    Attach it to the *trainer*, after its ``ValidationHandler`` (ignite runs handlers of one event in order of
    attachment, so the validation of the epoch has finished when this handler reads it). After every validation
    it rewrites ``<output_dir>/<name>_curve.csv`` (``iteration, epoch, metric``, atomically) and at the end of the
    run ``<name>_curve.png``. A resumed run keeps the points recorded before the interruption (re-read from the CSV);
    for that it must also come after the ``ResumeCheckpoint`` handler, whose ``STARTED`` handler restores the
    iteration it reads (``train.json`` lists it last).

    Args:
        evaluator: the ``SupervisedEvaluator`` run by the trainer's ``ValidationHandler``.
        output_dir: where the CSV and PNG go.
        name: file prefix and plot label, e.g. ``"student"`` or ``"teacher"``.
        metric_name: the evaluator metric to record; default its key metric.
        enabled: ``False`` attaches nothing.
    """

    def __init__(
        self,
        evaluator: Any,
        output_dir: str,
        name: str = "student",
        metric_name: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.evaluator = evaluator
        self.output_dir = str(output_dir)
        self.name = name
        self.metric_name = metric_name
        self.enabled = bool(enabled)
        self.points: list[tuple[int, int, float]] = []

    @property
    def csv_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_curve.csv")

    @property
    def png_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_curve.png")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _started(self, engine: Engine) -> None:
        # a fresh run starts a fresh curve; a resumed one keeps the points up to where it resumes
        start = engine.state.iteration
        self.points = [p for p in read_curve(self.csv_path) if p[0] <= start] if start > 0 else []

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
