"""What a distiller sees in one training iteration, and the base class every distiller derives from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["DistillationInputs", "Distiller", "PairedTapsDistiller", "student_parameters"]


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

    Subclasses name the taps they read in :attr:`required_teacher_taps` and :attr:`required_student_taps`
    (both default to :attr:`required_taps`), so that missing taps are a config error at start-up.

    Parameters of a distiller (1x1 adapters, side heads) are trained with the student: they are returned by
    :meth:`trainable_parameters`, which :func:`student_parameters` hands to the student's optimiser. They are
    not part of the student network and are never exported. Sub-modules listed in :attr:`external_modules`
    (an adversarial critic, a self-teacher) are updated elsewhere, by a handler, and are left out.
    """

    required_taps: tuple[str, ...] = ()
    external_modules: tuple[str, ...] = ()

    @property
    def required_teacher_taps(self) -> tuple[str, ...]:
        return tuple(self.required_taps)

    @property
    def required_student_taps(self) -> tuple[str, ...]:
        return tuple(self.required_taps)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters optimised together with the student (everything but :attr:`external_modules`)."""
        external = set()
        for name in self.external_modules:
            module = getattr(self, name, None)
            if isinstance(module, nn.Module):
                external.update(id(p) for p in module.parameters())
        return [p for p in self.parameters() if p.requires_grad and id(p) not in external]

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PairedTapsDistiller(Distiller):
    """A distiller that compares teacher tap ``t`` with student tap ``s`` for each ``(t, s)`` in ``self.pairs``."""

    pairs: list[tuple[str, str]]

    @property
    def required_teacher_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for t, _ in self.pairs))

    @property
    def required_student_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for _, s in self.pairs))


def student_parameters(network: nn.Module, distillers: Mapping[str, nn.Module] | None = None) -> list[nn.Parameter]:
    """The student's parameters followed by the trainable parameters of every distiller, without duplicates.

    Use it as the ``params`` of the student optimiser, so that adapters and side heads learn with the student.
    """
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    groups = [list(network.parameters())]
    for module in (distillers or {}).values():
        get = getattr(module, "trainable_parameters", None)
        groups.append(list(get()) if callable(get) else [p for p in module.parameters() if p.requires_grad])
    for group in groups:
        for p in group:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params
