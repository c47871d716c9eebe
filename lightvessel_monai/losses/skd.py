"""Structured knowledge distillation: the pair-wise (node-similarity graph) and holistic (adversarial) terms.

Reference:
    Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge Distillation for Semantic Segmentation",
    CVPR 2019.

SKD's pixel-wise term is :class:`~lightvessel_monai.losses.KnowledgeDistillation`. The teacher is a constant (its
tensors are detached). Tensors are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses._common import (
    TapSpec,
    activation_from_flags,
    check_same_layout,
    class_probabilities,
    tap_feature,
    tap_pairs,
)
from lightvessel_monai.losses.asd import AdversarialSimilarityDistillation
from lightvessel_monai.losses.base import DistillationInputs, Distiller
from lightvessel_monai.losses.fsd import fsd_pair_loss

__all__ = ["HolisticDistillation", "PairwiseDistillation"]


class PairwiseDistillation(Distiller):
    r"""Pair-wise term of Structured KD (Liu et al., CVPR 2019): match the node-to-node similarity graph.

    One feature map per network is average-pooled into ``beta x beta`` (``x beta`` in 3D) nodes, every node is
    L2-normalised over channels, and with ``a_{ij} = f_i^T f_j`` the cosine similarity of nodes ``i`` and ``j``

    .. math::
        \mathcal{L}_{pa} = \frac{1}{B N^2} \sum_b \sum_{i, j} (a^s_{ij} - a^t_{ij})^2 .

    This is :func:`lightvessel_monai.losses.fsd.fsd_pair_loss` with the same map as "encoder" and "decoder"
    (``S = F^T F``), evaluated in its implicit Gram form, so the ``N x N`` matrices are never built. The student is
    resized (bi/trilinear) to the teacher's grid before pooling; channel counts may differ.

    Args:
        tap: the tap (or ``[teacher_tap, student_tap]``) whose map is distilled. Liu et al. distil a late feature
            map of the segmentation head; the U-Net's analogue is ``dec1``, the map its 1x1 classifier reads.
        pool_size: node size ``beta`` (kernel and stride of the average pooling); ``None`` or 1 for pixel nodes.
            Default 2: 2x2 (2x2x2) nodes keep 1-3 pixel wide vessels apart. The paper varies ``beta``; the
            authors' code max-pools to a coarse 2x2 grid of nodes, which would discard the vessel layout. The implicit
            Gram form makes the cost linear in the number of nodes, so fine nodes are affordable.
        compute_dtype: see :func:`~lightvessel_monai.losses.fsd.fsd_pair_loss`.

    Shapes: features ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D; returns a scalar.
    """

    method = "SKD pair-wise"

    def __init__(
        self, tap: TapSpec = "dec1", pool_size: int | None = 2, compute_dtype: torch.dtype | str | None = None
    ):
        super().__init__()
        if not isinstance(tap, str) and not (isinstance(tap, Sequence) and len(tap) == 2):
            raise ConfigKeyError(
                f"{self.method} tap must be a tap name or a [teacher_tap, student_tap] pair, got {tap!r}"
            )
        ((self.teacher_tap, self.student_tap),) = tap_pairs([tap], f"{self.method} tap")
        if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1):
            raise ValueError(f"{self.method} pool_size must be None or a positive int, got {pool_size!r}")
        self.pool_size = pool_size
        self.compute_dtype = compute_dtype

    @property
    def required_teacher_taps(self) -> tuple[str, ...]:
        return (self.teacher_tap,)

    @property
    def required_student_taps(self) -> tuple[str, ...]:
        return (self.student_tap,)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        t = tap_feature(inputs.teacher_features, self.teacher_tap, "teacher", self.method)
        s = tap_feature(inputs.student_features, self.student_tap, "student", self.method)
        check_same_layout(t, s, self.method)
        grid = tuple(int(n) for n in t.shape[2:])
        return fsd_pair_loss(t, t, s, s, grid=grid, pool_size=self.pool_size, compute_dtype=self.compute_dtype)

    def extra_repr(self) -> str:
        return f"tap=({self.teacher_tap!r}, {self.student_tap!r}), pool_size={self.pool_size}"


class HolisticDistillation(AdversarialSimilarityDistillation):
    """Holistic term of Structured KD (Liu et al., CVPR 2019): a conditional Wasserstein critic.

    The critic judges ``concat(image, p)`` (the image as condition and the class probabilities ``p``): the
    teacher's map is "real", the student's "fake". This module returns the student's generator loss
    ``-E[D(concat(I, p_s))]`` (for ``wgan-gp``); the critic is trained by
    :class:`lightvessel_monai.handlers.AdversarialUpdateHandler` with its own optimiser, and its parameters get no
    gradient from the student term (see :class:`~lightvessel_monai.losses.asd.AdversarialSimilarityDistillation`).

    Args:
        discriminator: the critic, e.g. :class:`lightvessel_monai.networks.SimilarityDiscriminator` with
            ``in_channels = in_channels + num_classes``.
        softmax, sigmoid: the head's activation, MONAI's convention (see ``AdversarialSimilarityDistillation``).
        gan_loss: ``"wgan-gp"`` (the paper's Wasserstein loss with gradient penalty), ``"hinge"`` or ``"lsgan"``.
        gp_weight: gradient-penalty weight; 10 as in the authors' code.
        warmup_iterations: the student term is 0 for the first iterations.

    Shapes: image ``(B, C_in, ...)`` and logits ``(B, K, ...)`` on the same grid; critic input ``(B, C_in + K, ...)``.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        softmax: bool = True,
        sigmoid: bool = False,
        gan_loss: str = "wgan-gp",
        gp_weight: float = 10.0,
        warmup_iterations: int = 0,
    ) -> None:
        activation_from_flags(softmax, sigmoid, "SKD holistic")
        super().__init__(
            discriminator,
            correlation="concat",
            softmax=softmax,
            sigmoid=sigmoid,
            gan_loss=gan_loss,
            gp_weight=gp_weight,
            warmup_iterations=warmup_iterations,
        )

    def critic_map(self, pred: torch.Tensor, label: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """``concat(image, probabilities(pred))``; the label is not used (the critic is conditioned on the image)."""
        if image is None:
            raise ValueError("SKD holistic distillation needs the input image (conditional critic), got None")
        if image.shape[0] != pred.shape[0] or image.shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"SKD holistic distillation needs image and prediction on the same grid, got image "
                f"{tuple(image.shape)} and prediction {tuple(pred.shape)}"
            )
        prob = class_probabilities(pred, self.activation)
        return torch.cat([image.to(prob.dtype), prob], dim=1)
