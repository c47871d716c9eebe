"""What a distiller sees in one training iteration, and the base class every distiller derives from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["DistillationInputs", "Distiller", "PairedTapsDistiller"]


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
        labelled: ``(B,)`` booleans, which samples carry an annotation; ``None`` when all do. Where a sample has
            none (an unlabelled image, a mixed input), ``label`` holds the teacher's prediction (its argmax), or the
            student's own when there is no teacher: a term that reads ``label`` uses that stand-in there.
        shared: values that several terms of one step compute once and share (GKD's semantic vectors), keyed by
            their producer. It is made for each step and dropped with it, so nothing (nor a graph) outlives the step.
    """

    image: torch.Tensor
    label: torch.Tensor
    student_pred: torch.Tensor
    teacher_pred: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    iteration: int = 0
    labelled: torch.Tensor | None = None
    shared: dict[object, object] = field(default_factory=dict)

    def detached(self) -> DistillationInputs:
        """The same tensors without their autograd graphs, for handlers that run after the student's step."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach()

        return DistillationInputs(
            image=self.image.detach(),
            label=self.label.detach(),
            student_pred=self.student_pred.detach(),
            teacher_pred=cut(self.teacher_pred),
            student_features={k: v.detach() for k, v in self.student_features.items()},
            teacher_features={k: v.detach() for k, v in self.teacher_features.items()},
            iteration=self.iteration,
            labelled=self.labelled,
        )  # without ``shared``: its values hold the step's graph


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
