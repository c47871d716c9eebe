"""Pixel-wise knowledge distillation: KL divergence between the softened class maps of teacher and student.

Reference:
    G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2014.

The teacher is a constant (its tensors are detached). Class maps are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)``
in 3D.
"""

from __future__ import annotations

import torch

from lightvessel_monai.losses._common import (
    activation_from_flags,
    check_positive,
    class_balanced_weights,
    require_teacher_pred,
    soft_kl,
)
from lightvessel_monai.losses.base import DistillationInputs, Distiller

__all__ = ["KnowledgeDistillation"]


class KnowledgeDistillation(Distiller):
    r"""Pixel-wise Hinton KD: temperature-softened ``KL(p_t || p_s)`` per pixel, averaged, times ``T^2``.

    .. math::
        \mathcal{L}_{KD} = \frac{T^2}{B N} \sum_{b, x}
            \mathrm{KL}\big(\sigma(z^t_{b,x} / T) \,\|\, \sigma(z^s_{b,x} / T)\big)

    with ``sigma`` the softmax over classes (multi-class head) or per-channel sigmoid (binary head), see
    :func:`lightvessel_monai.losses._common.soft_kl`. Logits are ``(B, K, H, W)`` in 2D or ``(B, K, D, H, W)``
    in 3D; teacher and student must agree in shape.

    Subclasses change whom the student follows by overriding :meth:`target_logits` (DSKD's self-teacher).

    Args:
        temperature: ``T``. Default 4: Hinton et al. use T between 2 and 20 and report that intermediate values
            work best for small students; with only ``K = 2`` classes a moderate ``T`` keeps the foreground/background
            ratio informative without flattening it, and ``T = 4`` is the value of EMKD's prediction-map term and of
            common segmentation KD baselines. SKD's pixel-wise term uses ``T = 1``.
        softmax: the logits are a multi-class head (``(B, K, ...)``, one distribution per pixel); the default.
        sigmoid: the logits are a binary or multi-label head (each channel a Bernoulli distribution); set
            ``softmax=False`` with it, as in MONAI's ``DiceLoss``.
        warmup_iterations: the term is 0 up to this trainer iteration (1-based).
        class_balanced: not in Hinton et al.; an option of this project. Average the per-pixel KL with
            :func:`~lightvessel_monai.losses._common.class_balanced_weights` of the label, so that each annotated
            class (vessel, background) weighs the same, instead of a plain mean that is mostly background. Needs a
            label at the logits' size and a multi-class (``softmax``) head. Default ``False``: the paper's mean.
            Unlabelled samples: the weights come from ``inputs.label``, the teacher's argmax where a sample has no
            label (:class:`~lightvessel_monai.losses.base.DistillationInputs`).
    """

    method = "KD"

    def __init__(
        self,
        temperature: float = 4.0,
        softmax: bool = True,
        sigmoid: bool = False,
        warmup_iterations: int = 0,
        class_balanced: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, f"{self.method} temperature")
        self.activation = activation_from_flags(softmax, sigmoid, self.method)
        self.softmax, self.sigmoid = softmax, sigmoid
        if int(warmup_iterations) < 0:
            raise ValueError(f"{self.method} warmup_iterations must be >= 0, got {warmup_iterations}")
        self.warmup_iterations = int(warmup_iterations)
        if class_balanced and self.activation != "softmax":
            raise ValueError(f"{self.method} class_balanced needs a multi-class head (softmax=True)")
        self.class_balanced = bool(class_balanced)

    def target_logits(self, inputs: DistillationInputs) -> torch.Tensor:
        """The logits the student follows (no graph): the frozen teacher's."""
        return require_teacher_pred(inputs, self.method)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        if self.warmup_iterations and inputs.iteration <= self.warmup_iterations:
            return inputs.student_pred.new_zeros(())
        weight = None
        if self.class_balanced:
            pred, label = inputs.student_pred, inputs.label
            if label.shape[2:] != pred.shape[2:]:
                raise ValueError(
                    f"{self.method} class_balanced: label size {tuple(label.shape[2:])} differs from the logits' "
                    f"{tuple(pred.shape[2:])}"
                )
            weight = class_balanced_weights(label, pred.shape[1])
        return soft_kl(
            inputs.student_pred, self.target_logits(inputs), self.temperature, self.activation, pixel_weight=weight
        )

    def extra_repr(self) -> str:
        balanced = ", class_balanced=True" if self.class_balanced else ""
        return f"temperature={self.temperature}, activation={self.activation!r}{balanced}"
