"""Which handlers a distributed run keeps on every rank, and which only on rank 0 (those that only write)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import CheckpointSaver, MLFlowHandler, StatsHandler, TensorBoardStatsHandler

from lightvessel_monai.handlers.final_weights import FinalWeightsSaver
from lightvessel_monai.handlers.overlays import ValidationOverlayHandler
from lightvessel_monai.handlers.progress import ProgressBarHandler
from lightvessel_monai.pipeline.distributed import is_rank0
from lightvessel_monai.reporting.learning_curves import LearningCurveHandler

__all__ = ["WRITER_HANDLERS", "rank0_handlers"]

WRITER_HANDLERS: tuple[type, ...] = (
    CheckpointSaver,
    MLFlowHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    FinalWeightsSaver,
    LearningCurveHandler,
    ProgressBarHandler,
    ValidationOverlayHandler,
)
"""Handlers that only write files or logs: one copy, on rank 0, is enough (and several would clash). A new handler
that only writes belongs here."""


def rank0_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """``handlers`` on rank 0; on other ranks, without the :data:`WRITER_HANDLERS` (logs, checkpoints, curves).

    What every rank must run stays: validation (its metric is all-gathered), learning-rate schedules, the non-finite
    loss guard and :class:`~lightvessel_monai.handlers.ResumeCheckpoint` (all ranks load it; it saves on rank 0).
    ``None`` entries (a disabled optional handler) are dropped on every rank.
    """
    handlers = [h for h in (handlers or []) if h is not None]
    if is_rank0():
        return handlers
    return [h for h in handlers if not isinstance(h, WRITER_HANDLERS)]
