"""Pseudo-label self-training: the student fits the teacher's hard masks on the samples that have no annotation.

Reference:
    Q. Xie, M.-T. Luong, E. Hovy, Q. V. Le, "Self-training with Noisy Student improves ImageNet classification",
    CVPR 2020 (a teacher labels unlabelled images; a noised, here augmented, student learns them).

Logits are ``(B, K, H, W)`` in 2D and ``(B, K, D, H, W)`` in 3D.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DiceCELoss

from lightvessel_monai.losses._common import require_teacher_pred
from lightvessel_monai.losses.base import DistillationInputs, Distiller

__all__ = ["PseudoLabelLoss"]


class PseudoLabelLoss(Distiller):
    """The segmentation loss of the student against the teacher's thresholded prediction, on unlabelled samples.

    Uses the annotation stand-in of :class:`~lightvessel_monai.losses.base.DistillationInputs`: where a sample has no
    label, ``inputs.label`` is the teacher's argmax (for two classes: its softmax thresholded at 0.5), computed online
    on exactly the view the student sees. Labelled samples are left to the trainer's segmentation loss, so this term
    is 0 on a batch without unlabelled samples.

    Args:
        loss: ``(logits, label) -> scalar``; default MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``, the
            bundle's segmentation loss, so an unlabelled sample counts as a labelled one would.
    """

    method = "pseudo-label"

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.loss = loss if loss is not None else DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        require_teacher_pred(inputs, self.method)  # the stand-in must be the teacher's, not the student's own
        if inputs.labelled is None or bool(inputs.labelled.all()):
            return inputs.student_pred.sum() * 0.0
        unlabelled = ~inputs.labelled
        return self.loss(inputs.student_pred[unlabelled], inputs.label[unlabelled]).mean()
