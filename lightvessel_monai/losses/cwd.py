"""Channel-wise distillation: each channel's spatial softmax, matched by KL divergence, through a 1x1 adapter.

Reference:
    C. Shu, Y. Liu, J. Gao, Z. Yan, C. Shen, "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

The teacher is a constant (its tensors are detached). Taps are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D;
teacher and student may differ in channels (a learned adapter maps the student's) and in spatial size (the student
is resized to the teacher's grid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses._common import (
    REDUCTIONS,
    TapSpec,
    check_choice,
    check_positive,
    check_same_layout,
    paired_features,
    reduce_terms,
    require_teacher_pred,
    resize_to,
    tap_pairs,
)
from lightvessel_monai.losses.base import DistillationInputs, PairedTapsDistiller

__all__ = ["ChannelWiseDistillation", "channel_wise_divergence"]


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
        student_channels: ``{student_tap: channels}``, e.g. from :func:`lightvessel_monai.taps.tap_channels`.
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
        for t, s, teacher, student in paired_features(inputs, self.pairs, self.method):
            teacher = teacher.detach()
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
