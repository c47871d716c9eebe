"""ASD, Adversarial Similarity Distillation (LightVessel, Dang et al., ICASSP 2023)."""

from __future__ import annotations

import torch
from torch import nn

from lightvessel_monai.losses._common import (
    activation_from_flags,
    check_activation,
    check_choice,
    class_probabilities,
    label_to_onehot,
    require_teacher_pred,
)
from lightvessel_monai.losses.adversarial import (
    GAN_KINDS,
    discriminator_loss,
    frozen,
    generator_loss,
    gradient_penalty,
)
from lightvessel_monai.losses.base import DistillationInputs, Distiller

__all__ = ["AdversarialSimilarityDistillation", "correlation_map"]

CORRELATIONS = ("product", "concat")


def correlation_map(
    label: torch.Tensor, pred: torch.Tensor, correlation: str = "product", activation: str = "softmax"
) -> torch.Tensor:
    """Correlation between an annotation and a prediction.

    Args:
        label: ``(B, 1, ...)`` class indices or ``(B, K, ...)`` one-hot.
        pred: logits ``(B, K, H, W)`` in 2D or ``(B, K, D, H, W)`` in 3D.
        correlation: ``"product"`` gives ``label ⊙ p`` with ``K`` channels; ``"concat"`` gives
            ``concat(label, p)`` with ``2K`` channels.
        activation: ``"softmax"`` (multi-class head) or ``"sigmoid"`` (binary/multi-label head).
    """
    check_choice(correlation, CORRELATIONS, "correlation")
    prob = class_probabilities(pred.float(), check_activation(activation))
    label = label_to_onehot(label, pred.shape[1]).to(prob.dtype)
    if label.shape != prob.shape:
        raise ValueError(f"label shape {tuple(label.shape)} does not match prediction shape {tuple(prob.shape)}")
    return label * prob if correlation == "product" else torch.cat([label, prob], dim=1)


class AdversarialSimilarityDistillation(Distiller):
    """Student term of ASD: fool a critic that tells teacher correlation maps from student ones.

    Unlabelled samples: the annotation of the correlation maps is ``inputs.label``, which is the teacher's argmax
    where a sample has no label (:class:`~lightvessel_monai.losses.base.DistillationInputs`), for the critic's real
    and fake maps alike.

    The critic sees ``M = correlation(label, prediction)``: the teacher's map is "real", the student's
    is "fake". This module returns the generator loss of the student's map; the critic itself is
    trained by :class:`lightvessel_monai.handlers.AdversarialUpdateHandler`, which calls
    :meth:`critic_inputs` and :meth:`discriminator_loss`. Gradients of the student term flow through
    the critic into the student only: the critic's parameters are frozen while it is computed.

    Args:
        discriminator: critic network, e.g. :class:`lightvessel_monai.networks.SimilarityDiscriminator`
            with ``in_channels = K`` (``product``) or ``2K`` (``concat``).
        correlation: ``"product"`` (``label ⊙ p``, default) or ``"concat"``.
        softmax: the student and teacher heads are multi-class (default); ``sigmoid=True`` (with
            ``softmax=False``) for a binary or multi-label head, as in MONAI's ``DiceLoss``.
        gan_loss: ``"wgan-gp"`` (default), ``"hinge"`` or ``"lsgan"``.
        gp_weight: weight λ of the gradient penalty for ``wgan-gp``.
        warmup_iterations: the student term is 0 for the first iterations, so the critic gets a head start.

    Shapes: predictions and labels ``(B, K, H, W)`` in 2D or ``(B, K, D, H, W)`` in 3D; returns a scalar.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        correlation: str = "product",
        softmax: bool = True,
        sigmoid: bool = False,
        gan_loss: str = "wgan-gp",
        gp_weight: float = 10.0,
        warmup_iterations: int = 0,
    ) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.correlation = check_choice(correlation, CORRELATIONS, "correlation")
        self.activation = activation_from_flags(softmax, sigmoid, "ASD")
        self.softmax, self.sigmoid = softmax, sigmoid
        self.gan_loss = check_choice(gan_loss, GAN_KINDS, "gan_loss")
        self.gp_weight = gp_weight
        self.warmup_iterations = warmup_iterations

    external_modules = ("discriminator",)

    def critic_map(self, pred: torch.Tensor, label: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """What the critic judges for one prediction: here ``correlation(label, pred)``.

        Subclasses (e.g. the holistic term of SKD) override this to condition the critic on something else.
        """
        return correlation_map(label, pred, self.correlation, self.activation)

    def critic_inputs(
        self,
        label: torch.Tensor,
        teacher_pred: torch.Tensor,
        student_pred: torch.Tensor,
        image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, fake) critic inputs: the teacher's map and the student's."""
        return self.critic_map(teacher_pred, label, image), self.critic_map(student_pred, label, image)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        require_teacher_pred(inputs, type(self).__name__)
        if self.warmup_iterations and inputs.iteration <= self.warmup_iterations:
            return inputs.student_pred.new_zeros(())
        fake = self.critic_map(inputs.student_pred, inputs.label, inputs.image)
        with frozen(self.discriminator):
            return generator_loss(self.discriminator(fake), self.gan_loss)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, gp_scale: float = 1.0) -> torch.Tensor:
        """Critic loss on detached maps, with the gradient penalty for ``wgan-gp``."""
        real, fake = real.detach(), fake.detach()
        loss = discriminator_loss(self.discriminator(real), self.discriminator(fake), self.gan_loss)
        if self.gan_loss == "wgan-gp" and self.gp_weight > 0:
            loss = loss + self.gp_weight * gradient_penalty(self.discriminator, real, fake, scale=gp_scale)
        return loss
