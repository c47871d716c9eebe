"""Stop training at the first NaN or infinite loss term, naming the term and the iteration."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events

from lightvessel_monai.errors import TrainingDivergedError
from lightvessel_monai.pipeline.distributed import any_rank

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["StopOnNonFiniteLoss"]


def _loss_items(output: Any) -> list[tuple[str, float]]:
    """``(name, value)`` of every ``loss*`` entry of an engine output (a dict, or a list of dicts when decollated)."""
    items = []
    for part in output if isinstance(output, list) else [output]:
        if isinstance(part, dict):
            for name, value in part.items():
                if str(name).startswith("loss") and isinstance(value, (torch.Tensor, float, int)):
                    items.append((str(name), float(torch.as_tensor(value).detach().float().mean())))
    return items


class StopOnNonFiniteLoss:
    """After every iteration, check each logged loss term (``loss``, ``loss_seg``, ``loss_fsd``, ...).

    The first NaN or infinite one raises :class:`~lightvessel_monai.errors.TrainingDivergedError` with one line
    naming the term, its value and the iteration. It is raised before the epoch ends, so no validation,
    best-metric checkpoint or resume state is written from the diverged weights: the last good ones stay on disk.
    Ignite's ``TerminateOnNan`` stops quietly and lets the run exit 0; this one makes the command fail.

    Args:
        name: the engine's name in the message (``"student"`` or ``"teacher"``).
    """

    def __init__(self, name: str = "student") -> None:
        self.name = name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        bad = [(name, value) for name, value in _loss_items(engine.state.output) if not math.isfinite(value)]
        if any_rank(bool(bad)):  # every rank stops at the same iteration, or the others hang in DDP's all-reduce
            terms = ", ".join(f"{name} = {value}" for name, value in bad) or "a loss term on another rank"
            raise TrainingDivergedError(
                f"{self.name} training diverged at iteration {engine.state.iteration} (epoch {engine.state.epoch}): "
                f"{terms}; stopped, the last good checkpoints are kept. Lower learning_rate or the term's weight"
            )
