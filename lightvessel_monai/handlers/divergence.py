"""Stop a run that goes wrong while its numbers stay finite: a loss that explodes, a network that never segments.

:class:`~lightvessel_monai.handlers.StopOnNonFiniteLoss` catches NaN and infinity. A learning rate far too high can
instead drive the loss to 1e19 and keep it finite; the run then ends "successfully" with a student of Dice 0. The
two rules here turn both cases into a failed command with one line that says why. Each raises
:class:`~lightvessel_monai.errors.TrainingDivergedError` from inside the engine, before the run's end: the report,
``model_final.pt`` and the teacher cache are not written, and what was saved before (the best validated
``model.pt``, the resume file of the last epoch boundary) stays.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ignite.engine import Events

from lightvessel_monai.errors import ConfigKeyError, TrainingDivergedError
from lightvessel_monai.handlers.finite import _loss_items
from lightvessel_monai.pipeline.distributed import any_rank

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["StopOnLossGrowth", "StopOnZeroDice"]


class StopOnLossGrowth:
    """Stop when the total loss stays above ``factor`` times its early minimum for ``window`` iterations in a row.

    The reference is the smallest total loss (``loss``, absolute value) of the first ``warmup`` iterations: a
    minimum, not a median, so that a run that explodes from its second iteration (the usual case of a learning rate
    far too high) still has a sane reference. A healthy run's loss falls from there; ``factor`` 1000 is far above
    the noise of a Dice + CE loss and of every distillation term's warm-up, so only a diverging run crosses it. The
    message names the term that grew most against its own early minimum, its value, the iteration and the factor.
    A resumed run takes its reference from its own first iterations after the resume.

    Args:
        factor: the growth that counts as divergence (``divergence_factor``; 0 turns the rule off).
        window: how many consecutive iterations above it stop the run (``divergence_window``).
        warmup: the iterations whose minimum is the reference.
        name: the engine's name in the message (``"student"`` or ``"teacher"``).
    """

    def __init__(self, factor: float = 1000.0, window: int = 3, warmup: int = 10, name: str = "student") -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (factor == 0 or factor > 1):
            raise ConfigKeyError(f"'divergence_factor' must be 0 (off) or a number > 1, got {factor!r}")
        for key, value in (("divergence_window", window), ("warmup", warmup)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigKeyError(f"'{key}' must be a whole number >= 1, got {value!r}")
        self.factor, self.window, self.warmup, self.name = float(factor), int(window), int(warmup), name
        self.early: dict[str, float] = {}  # per term: the smallest |value| of the first warmup iterations
        self.seen = 0
        self.above = 0

    def attach(self, engine: Engine) -> None:
        if self.factor > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        terms = {name: abs(value) for name, value in _loss_items(engine.state.output) if math.isfinite(value)}
        if "loss" in terms:
            self.seen += 1
            if self.seen <= self.warmup:
                for name, value in terms.items():
                    self.early[name] = min(value, self.early.get(name, math.inf))
            reference = self.early.get("loss", math.inf)
            self.above = self.above + 1 if terms["loss"] > self.factor * max(reference, 1e-12) else 0
        # every rank decides together (each sees its own loss): a rank that stopped alone would hang the others
        if not any_rank(self.above >= self.window):
            return
        if "loss" not in terms or self.above < self.window:
            raise TrainingDivergedError(
                f"{self.name} training diverged at iteration {engine.state.iteration} (epoch {engine.state.epoch}) "
                f"on another rank: its total loss stayed above divergence_factor {self.factor:g}x its early minimum "
                f"for divergence_window {self.window} iterations. Stopped, the last good checkpoints are kept"
            )
        reference = self.early["loss"]
        growth = {n: v / self.early[n] for n, v in terms.items() if n != "loss" and self.early.get(n, 0) > 0}
        term = max(growth, key=growth.get) if growth else "loss"
        ratio = growth.get(term, terms["loss"] / max(reference, 1e-12))
        raise TrainingDivergedError(
            f"{self.name} training diverged at iteration {engine.state.iteration} (epoch {engine.state.epoch}): "
            f"{term} = {terms.get(term, terms['loss']):.3g}, {ratio:.3g}x its early minimum; the total loss stayed "
            f"above divergence_factor {self.factor:g}x its early minimum for divergence_window {self.window} "
            f"iterations. Stopped, the last good checkpoints are kept. Lower learning_rate or the term's weight"
        )


class StopOnZeroDice:
    """Stop when every validation so far scored Dice 0 and the run is at least ``after`` of its way through.

    A network that has segmented nothing by half its budget is not learning (a dead ReLU start, a label that maps to
    background only, a loss that cannot move the argmax). Function matching at a high temperature can sit at Dice
    0 for the first quarter of its schedule and then learn (XCA, issue 27), which is why the rule waits for a share
    of the run and for ``min_validations`` validations, not for a count of epochs. A resumed run counts the
    validations it runs itself.

    Args:
        evaluator: the validation engine whose ``metric`` is read after each of its runs.
        metric: the key metric's name (``val_mean_dice``).
        after: the share of ``max_epochs`` that must have passed (``zero_dice_after``; 0 turns the rule off).
        min_validations: validations needed before the rule applies.
        name: the engine's name in the message.
    """

    def __init__(
        self,
        evaluator: Engine,
        metric: str = "val_mean_dice",
        after: float = 0.5,
        min_validations: int = 3,
        name: str = "student",
    ) -> None:
        if isinstance(after, bool) or not isinstance(after, (int, float)) or not 0 <= after <= 1:
            raise ConfigKeyError(f"'zero_dice_after' must be a share of the run in [0, 1] (0: off), got {after!r}")
        self.evaluator, self.metric, self.after = evaluator, metric, float(after)
        self.min_validations, self.name = int(min_validations), name
        self.scores: list[float] = []
        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if self.after > 0:
            self.trainer = engine
            self.evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        score = evaluator.state.metrics.get(self.metric)
        if score is None or self.trainer is None:
            return
        self.scores.append(float(score))
        state = self.trainer.state
        done = state.epoch / max(1, state.max_epochs or 1)
        if len(self.scores) >= self.min_validations and done >= self.after and max(self.scores) == 0:
            raise TrainingDivergedError(
                f"{self.name} training is not learning: validation {self.metric} was 0 at all {len(self.scores)} "
                f"validations up to epoch {state.epoch} of {state.max_epochs} (zero_dice_after {self.after:g}). "
                f"Stopped, no report is written. Check the labels' values and the learning_rate"
            )
