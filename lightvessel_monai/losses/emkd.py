"""EMKD: prediction-map, importance-map and region-affinity distillation.

Reference:
    D. Qin, J.-J. Bu, Z. Liu, X. Shen, S. Zhou, J.-J. Gu, Z.-H. Wang, L. Wu, H.-F. Dai, "Efficient Medical Image
    Segmentation Based on Knowledge Distillation", IEEE Transactions on Medical Imaging 40(12), 2021
    (arXiv:2108.09987).

The student loss of EMKD is ``L_seg + 0.1 L_PMD + 0.9 L_IMD + 0.9 L_RAD`` with a focal + Dice segmentation loss in
the paper; ``configs/methods/emkd.json`` keeps the bundle's Dice + CE instead (a measured deviation) and offers the
paper's loss as ``emkd_paper_loss``. IMD and RAD read one low-level and one high-level feature map of each network.
The three terms are three distillers here, so that the trainer logs each one; the overlay sets the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lightvessel_monai.losses._common import (
    REDUCTIONS,
    TapSpec,
    check_choice,
    check_same_layout,
    full_precision,
    label_to_onehot,
    paired_features,
    reduce_terms,
    resize_to,
    tap_pairs,
)
from lightvessel_monai.losses.at import AttentionTransfer
from lightvessel_monai.losses.base import DistillationInputs, PairedTapsDistiller
from lightvessel_monai.losses.kd import KnowledgeDistillation

__all__ = [
    "ImportanceMapDistillation",
    "PredictionMapDistillation",
    "RegionAffinityDistillation",
    "region_affinity",
    "region_affinity_loss",
]

LABEL_RESIZE_MODES = ("area", "nearest")


class PredictionMapDistillation(KnowledgeDistillation):
    r"""PMD: pixel-wise ``KL(p_t || p_s)`` of temperature-softened class maps, times ``T^2`` (EMKD).

    The same objective as pixel-wise :class:`~lightvessel_monai.losses.KnowledgeDistillation`, with EMKD's
    temperature ``T = 4``. ``softmax=True`` for a multi-class head (logits ``(B, K, ...)``) and ``sigmoid=True``
    (with ``softmax=False``) for a binary head (``(B, 1, ...)`` logits; each channel is a Bernoulli distribution).
    """

    method = "EMKD PMD"

    def __init__(self, temperature: float = 4.0, softmax: bool = True, sigmoid: bool = False) -> None:
        super().__init__(temperature=temperature, softmax=softmax, sigmoid=sigmoid)


class ImportanceMapDistillation(AttentionTransfer):
    r"""IMD: match the normalised importance maps ``a(F) = normalise(mean_c |F_c|^p)`` at several levels.

    .. math::
        \mathcal{L}_{IMD} = \frac{1}{L} \sum_{l} \frac{1}{B} \sum_b \sum_x \big(a(F^s_{l,b})(x) - a(F^t_{l,b})(x)\big)^2

    with ``p = 4`` and the squared difference summed over positions, as in EMKD's code (this is attention transfer
    with a higher exponent, so it reuses :class:`~lightvessel_monai.losses.AttentionTransfer`). The student
    map is resized (bi/trilinear) to the teacher's grid. The levels are averaged (``reduction="mean"``); the
    authors' code adds its two levels, i.e. twice this value.

    Args:
        levels: taps ``["enc1", "enc2"]`` (low level, high level) or ``[teacher_tap, student_tap]`` pairs.
        p: exponent, 4 in EMKD.
        reduction: ``"mean"`` or ``"sum"`` over levels.

    Shapes: features ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D; returns a scalar.
    """

    method = "EMKD IMD"

    def __init__(
        self, levels: Sequence[TapSpec] = ("enc1", "enc2"), p: float = 4.0, reduction: str = "mean", eps: float = 1e-12
    ) -> None:
        super().__init__(pairs=levels, p=p, position_reduction="sum", reduction=reduction, eps=eps)


def region_affinity(feature: torch.Tensor, masks: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r"""Cosine affinities between the region prototypes of a feature map.

    The prototype of class ``k`` is the mask-weighted mean feature ``p_k = sum_x m_k(x) F(x) / sum_x m_k(x)``
    and ``A_{kl} = cos(p_k, p_l)``.

    Args:
        feature: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        masks: soft class masks ``(B, K, ...)`` on the feature's grid.

    Returns:
        ``(B, K, K)`` in float32. An empty region gives a zero prototype and zero affinities.
    """
    if masks.shape[0] != feature.shape[0] or masks.shape[2:] != feature.shape[2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match the feature grid {tuple(feature.shape)}")
    with full_precision(feature.device):
        f = feature.float().flatten(2)  # (B, C, N)
        m = masks.float().flatten(2)  # (B, K, N)
        prototypes = torch.bmm(m, f.transpose(1, 2)) / m.sum(dim=-1, keepdim=True).clamp_min(eps)  # (B, K, C)
        prototypes = F.normalize(prototypes, p=2.0, dim=-1, eps=eps)
        return torch.bmm(prototypes, prototypes.transpose(1, 2))


def region_affinity_loss(
    teacher_feature: torch.Tensor,
    student_feature: torch.Tensor,
    onehot: torch.Tensor,
    label_resize: str = "area",
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""RAD loss of one level: squared difference of the teacher's and student's region affinities.

    The one-hot label is resized to each network's grid (``"area"``: each cell keeps the fraction of every class
    it covers, so a vessel thinner than the feature stride still has a non-zero mask; ``"nearest"`` would drop it).
    Per sample, with ``P`` the pairs ``k < l`` of classes present on both grids,
    ``L_b = mean_{(k,l) in P} (A^s_{kl} - A^t_{kl})^2`` (0 when fewer than two classes are present); the loss is
    the mean of ``L_b`` over the batch. Affinities are ``K x K``, so channels and grids of the two networks may differ.

    Args:
        teacher_feature: ``(B, C_t, ...)``; detached.
        student_feature: ``(B, C_s, ...)``.
        onehot: ``(B, K, ...)`` one-hot label at the input resolution.
        label_resize: ``"area"`` (default) or ``"nearest"``.
    """
    check_choice(label_resize, LABEL_RESIZE_MODES, "RAD label_resize")
    check_same_layout(teacher_feature, student_feature, "EMKD RAD")
    if onehot.ndim != teacher_feature.ndim or onehot.shape[0] != teacher_feature.shape[0]:
        raise ValueError(f"label {tuple(onehot.shape)} does not match features {tuple(teacher_feature.shape)}")
    onehot = onehot.float()
    masks_t = resize_to(onehot, teacher_feature.shape[2:], mode=label_resize)
    masks_s = resize_to(onehot, student_feature.shape[2:], mode=label_resize)
    present = (masks_t.flatten(2).sum(-1) > 0) & (masks_s.flatten(2).sum(-1) > 0)  # (B, K)
    k = onehot.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=onehot.device).triu(diagonal=1)
    pairs = present[:, :, None] & present[:, None, :] & upper  # (B, K, K), each unordered pair once
    with torch.no_grad():
        a_t = region_affinity(teacher_feature.detach(), masks_t, eps)
    a_s = region_affinity(student_feature, masks_s, eps)
    sq = (a_s - a_t).pow(2) * pairs
    per_sample = sq.sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp_min(1)
    return per_sample.mean()


class RegionAffinityDistillation(PairedTapsDistiller):
    r"""RAD: transfer the cosine affinities between class-region prototypes (EMKD).

    Unlabelled samples: the regions are those of ``inputs.label``, the teacher's argmax where a sample has no label
    (:class:`~lightvessel_monai.losses.base.DistillationInputs`).

    For each level ``l`` and sample ``b``, the masked-average feature (prototype) of every class region present in
    the label is computed on each network's own grid, and the ``K x K`` cosine affinities are compared:

    .. math::
        \mathcal{L}_{RAD} = \frac{1}{L} \sum_l \frac{1}{B} \sum_b \frac{1}{|P_b|} \sum_{(k, l) \in P_b}
            \big(\cos(p^s_k, p^s_l) - \cos(p^t_k, p^t_l)\big)^2

    (see :func:`region_affinity_loss`). The label is resized with area interpolation of its one-hot form so thin
    vessels survive downsampling. EMKD's code handles the binary case (background/foreground); all pairs of
    present classes generalise it to ``K`` classes.

    Args:
        levels: taps ``["enc1", "enc2"]`` (low level, high level) or ``[teacher_tap, student_tap]`` pairs.
        num_classes: number of label classes ``K >= 2`` (background included); a binary sigmoid head uses 2.
        label_resize: ``"area"`` (default) or ``"nearest"``.
        reduction: ``"mean"`` or ``"sum"`` over levels.

    Shapes: features ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D, label ``(B, 1, ...)`` indices or
    ``(B, K, ...)`` one-hot at the input resolution; returns a scalar.
    """

    method = "EMKD RAD"

    def __init__(
        self,
        levels: Sequence[TapSpec] = ("enc1", "enc2"),
        num_classes: int = 2,
        label_resize: str = "area",
        reduction: str = "mean",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.pairs = tap_pairs(levels, f"{self.method} levels")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"{self.method} num_classes must be an int >= 2 (background included), got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.label_resize = check_choice(label_resize, LABEL_RESIZE_MODES, f"{self.method} label_resize")
        self.reduction = check_choice(reduction, REDUCTIONS, f"{self.method} reduction")
        self.eps = float(eps)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        onehot = label_to_onehot(inputs.label, self.num_classes)
        losses = [
            region_affinity_loss(teacher, student, onehot, label_resize=self.label_resize, eps=self.eps)
            for _, _, teacher, student in paired_features(inputs, self.pairs, self.method)
        ]
        return reduce_terms(losses, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"levels={self.pairs}, num_classes={self.num_classes}, label_resize={self.label_resize!r}, "
            f"reduction={self.reduction!r}"
        )
