"""What a distiller sees in one training iteration, and the base class every distiller derives from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["DistillationInputs", "Distiller"]


@dataclass
class DistillationInputs:
    """Tensors of one iteration, shared by all distillers.

    Shapes are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D.

    Attributes:
        image: network input.
        label: annotation, ``(B, 1, ...)`` class indices or ``(B, K, ...)`` one-hot.
        student_pred: student logits ``(B, K, ...)`` (with autograd graph).
        teacher_pred: teacher logits ``(B, K, ...)``, or ``None`` for self-distillation without a teacher.
        student_features: student taps by name (with autograd graph).
        teacher_features: teacher taps by name (no graph: the teacher is frozen).
        iteration: the trainer's global iteration (1-based), for warm-up schedules.
    """

    image: torch.Tensor
    label: torch.Tensor
    student_pred: torch.Tensor
    teacher_pred: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    iteration: int = 0


class Distiller(nn.Module):
    """A distillation term: ``forward(inputs: DistillationInputs) -> scalar tensor``.

    Subclasses name the taps they need in :attr:`required_taps`, so the trainer can check at start-up
    that the teacher and student configs declare them.
    """

    required_taps: tuple[str, ...] = ()

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
