"""Classic distillers for segmentation: pixel-wise KD, attention transfer, channel-wise distillation, structured KD.

References:
    - KD: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2014.
    - AT: S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention", ICLR 2017.
    - CWD: C. Shu, Y. Liu, J. Gao, Z. Yan, C. Shen, "Channel-wise Knowledge Distillation for Dense Prediction",
      ICCV 2021.
    - SKD: Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge Distillation for Semantic
      Segmentation", CVPR 2019.

Every distiller returns one scalar and treats the teacher as a constant (its tensors are detached). Tensors are
``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D; teacher and student taps may differ in channels and in
spatial size, and the student is resized to the teacher's grid where a common grid is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses._common import (
    ACTIVATIONS,
    REDUCTIONS,
    TapSpec,
    attention_map,
    check_choice,
    check_positive,
    check_same_layout,
    class_probabilities,
    l2_normalise,
    reduce_terms,
    require_teacher_pred,
    resize_to,
    soft_kl,
    tap_feature,
    tap_pairs,
)
from lightvessel_monai.losses.asd import AdversarialSimilarityDistillation
from lightvessel_monai.losses.base import DistillationInputs, Distiller, PairedTapsDistiller
from lightvessel_monai.losses.fsd import fsd_pair_loss

__all__ = [
    "AttentionTransfer",
    "ChannelWiseDistillation",
    "HolisticDistillation",
    "KnowledgeDistillation",
    "PairwiseDistillation",
    "attention_transfer_loss",
    "channel_wise_divergence",
]

# --------------------------------------------------------------------------------------------------- KD


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
        activation: ``"softmax"`` or ``"sigmoid"``.
        warmup_iterations: the term is 0 up to this trainer iteration (1-based).
    """

    method = "KD"

    def __init__(self, temperature: float = 4.0, activation: str = "softmax", warmup_iterations: int = 0) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, f"{self.method} temperature")
        self.activation = check_choice(activation, ACTIVATIONS, f"{self.method} activation")
        if int(warmup_iterations) < 0:
            raise ValueError(f"{self.method} warmup_iterations must be >= 0, got {warmup_iterations}")
        self.warmup_iterations = int(warmup_iterations)

    def target_logits(self, inputs: DistillationInputs) -> torch.Tensor:
        """The logits the student follows (no graph): the frozen teacher's."""
        return require_teacher_pred(inputs, self.method)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        if self.warmup_iterations and inputs.iteration <= self.warmup_iterations:
            return inputs.student_pred.new_zeros(())
        return soft_kl(inputs.student_pred, self.target_logits(inputs), self.temperature, self.activation)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, activation={self.activation!r}"


# --------------------------------------------------------------------------------------------------- AT


def attention_transfer_loss(
    teacher_feature: torch.Tensor,
    student_feature: torch.Tensor,
    p: float = 2.0,
    position_reduction: str = "mean",
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""Squared distance of the normalised spatial attention maps of one teacher/student tap pair.

    With ``a(F) = mean_c |F_c|^p / ||mean_c |F_c|^p||_2`` (:func:`~lightvessel_monai.losses._common.attention_map`,
    ``(B, C, *spatial) -> (B, 1, *spatial)``), the per-sample loss is ``sum_x (a_s(x) - a_t(x))^2`` (``"sum"``,
    as in EMKD's importance maps) or its mean over the ``N`` positions (``"mean"``, as in the AT authors' code,
    which weights the sum over transfer points by ``beta = 1000``); the result is the mean over the batch. The
    student's attention map is resized (bi/trilinear) to the teacher's grid and re-normalised, so channels and
    sizes may differ.

    Args:
        teacher_feature: ``(B, C_t, H, W)`` or ``(B, C_t, D, H, W)``; detached.
        student_feature: ``(B, C_s, ...)``, same B and number of spatial dims.
        p: exponent of the attention map (2 for AT, 4 for EMKD's IMD).
        position_reduction: ``"mean"`` or ``"sum"`` over positions.
    """
    check_positive(p, "attention exponent p")
    check_choice(position_reduction, REDUCTIONS, "attention position_reduction")
    check_same_layout(teacher_feature, student_feature, "attention transfer")
    a_t = attention_map(teacher_feature.detach(), p=p, eps=eps)
    a_s = attention_map(student_feature, p=p, eps=eps)
    if a_s.shape[2:] != a_t.shape[2:]:
        # interpolation is linear, so resizing the normalised map and normalising again equals resizing first
        a_s = l2_normalise(resize_to(a_s, a_t.shape[2:], mode="linear"), eps)
    sq = (a_s - a_t).pow(2).flatten(1)
    per_sample = sq.sum(dim=1) if position_reduction == "sum" else sq.mean(dim=1)
    return per_sample.mean()


class AttentionTransfer(PairedTapsDistiller):
    r"""Activation-based attention transfer (Zagoruyko & Komodakis, ICLR 2017) over tap pairs.

    .. math::
        \mathcal{L}_{AT} = \sum_{j} \frac{1}{B} \sum_b \frac{1}{N_j}
            \big\lVert a(F^s_{j,b}) - a(F^t_{j,b}) \big\rVert_2^2,
        \quad a(F) = \frac{\mathrm{mean}_c |F_c|^p}{\lVert \mathrm{mean}_c |F_c|^p \rVert_2}

    The paper writes the distance as an (unsquared) L2 norm with weight ``beta/2``; the authors' public code uses
    the squared difference averaged over positions and batch, summed over the transfer points and multiplied by
    ``beta = 1000`` in its training script. That form is implemented, and ``configs/methods/at.json`` uses the
    distiller weight 1000. See :func:`attention_transfer_loss`.

    Args:
        pairs: ``["enc1", ["t_tap", "s_tap"], ...]`` (see :func:`~lightvessel_monai.losses._common.tap_pairs`).
        p: attention exponent; 2 as in the paper.
        position_reduction: ``"mean"`` (AT) or ``"sum"`` (EMKD IMD) over positions.
        reduction: ``"sum"`` (AT: summed over the transfer points) or ``"mean"`` over pairs.

    Shapes: features ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D; returns a scalar.
    """

    method = "AT"

    def __init__(
        self,
        pairs: Sequence[TapSpec],
        p: float = 2.0,
        position_reduction: str = "mean",
        reduction: str = "sum",
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.pairs = tap_pairs(pairs, f"{self.method} pairs")
        self.p = check_positive(p, f"{self.method} p")
        self.position_reduction = check_choice(position_reduction, REDUCTIONS, f"{self.method} position_reduction")
        self.reduction = check_choice(reduction, REDUCTIONS, f"{self.method} reduction")
        self.eps = float(eps)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        losses = [
            attention_transfer_loss(
                tap_feature(inputs.teacher_features, t, "teacher", self.method),
                tap_feature(inputs.student_features, s, "student", self.method),
                p=self.p,
                position_reduction=self.position_reduction,
                eps=self.eps,
            )
            for t, s in self.pairs
        ]
        return reduce_terms(losses, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"pairs={self.pairs}, p={self.p}, position_reduction={self.position_reduction!r}, "
            f"reduction={self.reduction!r}"
        )


# -------------------------------------------------------------------------------------------------- CWD


def channel_wise_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    r"""Channel-wise distillation loss of Shu et al. (ICCV 2021) for two maps of identical shape.

    Every channel is turned into a distribution over the ``N`` spatial positions,
    ``phi(y_c)_i = softmax_i(y_{c,i} / T)``, and

    .. math::
        \mathcal{L}_{CWD} = \frac{T^2}{B C} \sum_{b, c} \sum_i \phi(y^t_{b,c})_i
            \log \frac{\phi(y^t_{b,c})_i}{\phi(y^s_{b,c})_i}.

    Args:
        student: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` (already adapted to the teacher's channels and grid).
        teacher: same shape; detached. Computed in float32.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"CWD maps differ in shape: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    t = float(temperature)
    log_ps = F.log_softmax(student.float().flatten(2) / t, dim=-1)
    log_pt = F.log_softmax(teacher.detach().float().flatten(2) / t, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (B, C)
    return kl.mean() * (t * t)


def _adapter_key(teacher_tap: str, student_tap: str) -> str:
    return student_tap if teacher_tap == student_tap else f"{student_tap}_to_{teacher_tap}"


class ChannelWiseDistillation(PairedTapsDistiller):
    r"""Channel-wise distillation (Shu et al., ICCV 2021) on feature taps and/or on the logits.

    For every ``(teacher_tap, student_tap)`` pair the student feature goes through a learned 1x1 convolution
    (``C_s -> C_t``, ``nn.Conv2d``/``nn.Conv3d`` by ``spatial_dims``; the paper's alignment layer) and is resized
    (bi/trilinear) to the teacher's grid; then :func:`channel_wise_divergence` compares them. With
    ``logits=True`` the term on ``(student_pred, teacher_pred)`` (same ``K`` channels, no adapter) is added.
    Terms are summed (``reduction="sum"``) or averaged.

    The adapters are trained with the student (:meth:`trainable_parameters`) and never exported.

    Args:
        pairs: feature tap pairs ``["dec1", ["t_tap", "s_tap"], ...]``; may be empty when ``logits=True``.
        student_channels: ``{student_tap: channels}``, e.g. from :func:`lightvessel_monai.features.tap_channels`.
        teacher_channels: ``{teacher_tap: channels}``.
        spatial_dims: 2 or 3 (the adapters' convolution type).
        temperature: ``T`` of the spatial softmax. Default 4, the segmentation setting of the public CIRKD
            implementation of CWD (mmrazor's CWD configs use 1); the ``T^2`` factor keeps gradients comparable.
        logits: also distil the logits.
        adapter: ``False`` compares features directly (teacher and student channels must then be equal).
        reduction: ``"sum"`` or ``"mean"`` over the terms.

    Shapes: features ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D; returns a scalar.
    """

    method = "CWD"

    def __init__(
        self,
        pairs: Sequence[TapSpec] | None = None,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
        spatial_dims: int = 2,
        temperature: float = 4.0,
        logits: bool = False,
        adapter: bool = True,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        self.pairs = tap_pairs(pairs, f"{self.method} pairs") if pairs else []
        self.logits = bool(logits)
        if not self.pairs and not self.logits:
            raise ConfigKeyError(f"{self.method}: nothing to distil; give feature 'pairs' or set 'logits' to true")
        if spatial_dims not in (2, 3):
            raise ValueError(f"{self.method} spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = int(spatial_dims)
        self.temperature = check_positive(temperature, f"{self.method} temperature")
        self.reduction = check_choice(reduction, REDUCTIONS, f"{self.method} reduction")
        self.use_adapter = bool(adapter)
        self.adapters = nn.ModuleDict()
        if self.use_adapter:
            conv = Conv[Conv.CONV, self.spatial_dims]
            for t, s in self.pairs:
                cs = self._channels(student_channels, s, "student_channels")
                ct = self._channels(teacher_channels, t, "teacher_channels")
                self.adapters[_adapter_key(t, s)] = conv(cs, ct, kernel_size=1)

    def _channels(self, channels: Mapping[str, int] | None, tap: str, what: str) -> int:
        if not channels or tap not in channels:
            declared = ", ".join(sorted(channels or {})) or "none"
            raise ConfigKeyError(f"{self.method} {what} has no entry for tap '{tap}' (declared: {declared})")
        value = channels[tap]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigKeyError(f"{self.method} {what}['{tap}'] must be a positive int, got {value!r}")
        return value

    def align(self, teacher_tap: str, student_tap: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Student feature mapped to the teacher's channels (1x1 adapter) and grid (bi/trilinear resize)."""
        check_same_layout(teacher, student, f"{self.method} pair ({teacher_tap}, {student_tap})")
        if student.ndim - 2 != self.spatial_dims:
            raise ValueError(
                f"{self.method} was built with spatial_dims={self.spatial_dims} but tap '{student_tap}' has "
                f"shape {tuple(student.shape)}"
            )
        if self.use_adapter:
            adapter = self.adapters[_adapter_key(teacher_tap, student_tap)]
            if student.shape[1] != adapter.in_channels:
                raise ValueError(
                    f"{self.method} adapter for student tap '{student_tap}' expects {adapter.in_channels} channels, "
                    f"got {student.shape[1]}; check student_channels"
                )
            student = adapter(student)  # a 1x1 conv commutes with linear resizing: adapt first, at the student's grid
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"{self.method} pair ({teacher_tap}, {student_tap}) has {teacher.shape[1]} teacher and "
                f"{student.shape[1]} student channels; use adapter=True"
            )
        return resize_to(student, teacher.shape[2:], mode="linear")

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        losses = []
        for t, s in self.pairs:
            teacher = tap_feature(inputs.teacher_features, t, "teacher", self.method).detach()
            student = tap_feature(inputs.student_features, s, "student", self.method)
            losses.append(channel_wise_divergence(self.align(t, s, student, teacher), teacher, self.temperature))
        if self.logits:
            teacher_pred = require_teacher_pred(inputs, self.method)
            losses.append(channel_wise_divergence(inputs.student_pred, teacher_pred, self.temperature))
        return reduce_terms(losses, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"pairs={self.pairs}, logits={self.logits}, temperature={self.temperature}, "
            f"adapter={self.use_adapter}, reduction={self.reduction!r}"
        )


# -------------------------------------------------------------------------------------------------- SKD


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
        activation: ``"softmax"`` or ``"sigmoid"``.
        gan_loss: ``"wgan-gp"`` (the paper's Wasserstein loss with gradient penalty), ``"hinge"`` or ``"lsgan"``.
        gp_weight: gradient-penalty weight; 10 as in the authors' code.
        warmup_iterations: the student term is 0 for the first iterations.

    Shapes: image ``(B, C_in, ...)`` and logits ``(B, K, ...)`` on the same grid; critic input ``(B, C_in + K, ...)``.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        activation: str = "softmax",
        gan_loss: str = "wgan-gp",
        gp_weight: float = 10.0,
        warmup_iterations: int = 0,
    ) -> None:
        check_choice(activation, ACTIVATIONS, "SKD holistic activation")
        super().__init__(
            discriminator,
            correlation="concat",
            activation=activation,
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
