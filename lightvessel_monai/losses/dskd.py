"""DSKD, Deep Self-knowledge Distillation (M. Lin, "Deep Self-knowledge Distillation: a hierarchical supervised
learning for coronary artery segmentation", arXiv 2509.03173, 2025).

DSKD adds two terms to the segmentation (Dice) loss of a student:

* **DDL**, the deep distribution loss (:class:`DeepDistributionLoss`): every decoder level ``i`` gets a side head
  ``y_i = act(B(f(X_i)))`` (``f``: 3x3 convolution to the classes, ``B``: bi/trilinear up-sampling to the input
  size). Side output and annotation are cut into ``s x s`` (``s x s x s`` in 3D) patches and each patch is
  summarised by its class-share vector (fraction of foreground and background); the two sets of vectors are
  compared with a KL divergence. The constraint is loose on purpose: a side output only has to put the right
  amount of vessel in each patch, not at the exact pixels, because coarse decoder levels cannot resolve them.
* **PSDL**, pixel-wise self-knowledge distillation (:class:`PixelwiseSelfDistillation`): the final prediction
  follows, pixel by pixel, that of a *self-teacher*, an earlier state of the student itself (an exponential
  moving average of its weights or its previous-epoch snapshot). The self-teacher is kept by
  :class:`lightvessel_monai.handlers.SelfTeacherHandler`, never by back-propagation.

PSDL is :class:`~lightvessel_monai.losses.KnowledgeDistillation` with the self-teacher in place of the
frozen teacher; ``configs/methods/dskd_kd.json`` adds the plain KD term from a separate teacher on top.

Side heads belong to the distiller (they are trained with the student through
:meth:`~lightvessel_monai.losses.base.Distiller.trainable_parameters` and never exported); the student network is
not modified, its decoder features are read with forward hooks (:class:`lightvessel_monai.taps.FeatureTaps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.utils import ensure_tuple_rep
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses._common import (
    activation_from_flags,
    check_activation,
    class_probabilities,
    label_to_onehot,
    resize_to,
)
from lightvessel_monai.losses.base import DistillationInputs, Distiller
from lightvessel_monai.losses.kd import KnowledgeDistillation

__all__ = [
    "DeepDistributionLoss",
    "PixelwiseSelfDistillation",
    "SideHeads",
    "patch_distribution",
    "patch_distribution_kl",
]

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def patch_distribution(prob: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """Per-patch class shares: the mean of ``prob`` over non-overlapping ``s x s (x s)`` patches.

    ``(B, K, H, W) -> (B, K, ceil(H/s), ceil(W/s))`` in 2D, ``(B, K, D, H, W) -> (B, K, ceil(D/s), ...)`` in 3D.
    For a (soft) one-hot map this counts the pixels of every class in each patch, divided by the patch size,
    which is the distribution vector of DSKD's deep distribution loss. Border patches that do not fit are
    averaged over the pixels they have; a patch larger than the image is clipped to it.
    """
    spatial_dims = prob.ndim - 2
    if spatial_dims not in _AVG_POOL:
        raise ValueError(f"expected a (B, K, *spatial) tensor with 1 to 3 spatial dims, got shape {tuple(prob.shape)}")
    size = ensure_tuple_rep(patch_size, spatial_dims)
    if any(int(s) < 1 for s in size):
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    kernel = tuple(min(int(s), int(n)) for s, n in zip(size, prob.shape[2:], strict=True))
    # ceil_mode without padding: a partial border patch is divided by its own pixel count
    return _AVG_POOL[spatial_dims](prob, kernel_size=kernel, stride=kernel, ceil_mode=True)


def patch_distribution_kl(
    logits: torch.Tensor,
    target: torch.Tensor,
    patch_size: int | Sequence[int],
    activation: str = "softmax",
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""``KL(Z || \tilde Z)`` between the patch class shares of a target map and of a prediction.

    Args:
        logits: prediction logits ``(B, K, H, W)`` or ``(B, K, D, H, W)``.
        target: float one-hot (or soft) target of the same shape.
        patch_size: patch edge ``s`` (an int, or one per spatial dim).
        activation: ``"softmax"``: one K-class distribution per patch. ``"sigmoid"``: every channel is a
            foreground/background pair ``[z, 1 - z]`` (for ``K = 1`` this is the paper's binary vector);
            the per-channel KLs are summed.
        eps: floor of the predicted shares inside the logarithm.

    Returns:
        the KL summed over classes, averaged over patches and batch (a scalar).
    """
    check_activation(activation)
    if logits.shape != target.shape:
        raise ValueError(f"prediction and target differ in shape: {tuple(logits.shape)} vs {tuple(target.shape)}")
    z_pred = patch_distribution(class_probabilities(logits, activation), patch_size)
    z_true = patch_distribution(target.to(z_pred.dtype), patch_size)
    if activation == "sigmoid":
        z_pred = torch.stack([z_pred, 1 - z_pred], dim=1).flatten(1, 2)
        z_true = torch.stack([z_true, 1 - z_true], dim=1).flatten(1, 2)
    # xlogy gives 0 log 0 = 0 for classes absent from a target patch
    kl = torch.xlogy(z_true, z_true) - z_true * torch.log(z_pred.clamp_min(eps))
    return kl.sum(dim=1).mean()


class SideHeads(nn.Module):
    """Deep-supervision heads: per tap a 3x3 convolution to ``out_channels`` logits, up-sampled to a target size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: ``{tap_name: channels}`` of the decoder features (e.g. from
            :func:`lightvessel_monai.taps.tap_channels`).
        out_channels: number of classes ``K`` (the student's output channels).
        taps: which taps get a head; default: every key of ``in_channels``.

    ``forward(features, size)`` maps ``{tap: (B, C_tap, *spatial_tap)}`` to ``{tap: (B, K, *size)}`` (bilinear in 2D,
    trilinear in 3D, as the paper's ``B(.)``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Mapping[str, int],
        out_channels: int,
        taps: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if int(out_channels) < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        taps = list(in_channels) if taps is None else [str(t) for t in taps]
        if not taps:
            raise ConfigKeyError("side heads: taps is empty; give at least one decoder tap of student_taps, e.g. dec1")
        missing = [t for t in taps if t not in in_channels]
        if missing:
            raise ConfigKeyError(
                f"side heads: no channel count for taps {missing}; in_channels has {sorted(in_channels)}"
            )
        conv = Conv[Conv.CONV, spatial_dims]
        self.taps = tuple(taps)
        self.spatial_dims = spatial_dims
        self.heads = nn.ModuleDict({t: conv(int(in_channels[t]), int(out_channels), 3, padding=1) for t in taps})

    def forward(self, features: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        return {t: resize_to(self.heads[t](features[t]), size, "linear") for t in self.taps}


class DeepDistributionLoss(Distiller):
    """DDL of DSKD (Lin 2025, arXiv 2509.03173): patch class-share KL between side outputs and the annotation.

    Unlabelled samples: the target distribution is that of ``inputs.label``, the teacher's argmax where a sample has
    no label, or the student's own (detached) without a teacher
    (:class:`~lightvessel_monai.losses.base.DistillationInputs`).

    For every decoder tap ``i``: ``logits_i = B(f(X_i))`` at the label's size (:class:`SideHeads`), then
    :func:`patch_distribution_kl` against the one-hot label. The levels are averaged, so the weight of the term
    does not depend on how many decoder levels a data overlay exposes.

    Args:
        taps: student decoder taps, e.g. ``["dec1", "dec2"]`` (any resolution; 3D students may be coarser).
        in_channels: ``{tap: channels}``, at least for ``taps``.
        out_channels: number of classes ``K``.
        spatial_dims: 2 or 3.
        patch_size: patch edge ``s`` (int or one per spatial dim).
        softmax: multi-class side outputs, as the bundle's students (default).
        sigmoid: binary side outputs, as the paper's (with ``softmax=False``; MONAI's convention).

    Shapes: features ``(B, C, *spatial)``; label ``(B, 1, H, W)`` / ``(B, 1, D, H, W)`` indices or ``(B, K, ...)``
    one-hot. Reads no teacher taps and no teacher prediction, so it runs with or without a teacher.
    """

    def __init__(
        self,
        taps: Sequence[str],
        in_channels: Mapping[str, int],
        out_channels: int,
        spatial_dims: int,
        patch_size: int | Sequence[int] = 8,
        softmax: bool = True,
        sigmoid: bool = False,
    ) -> None:
        super().__init__()
        activation = activation_from_flags(softmax, sigmoid, "DSKD DDL")
        self.softmax, self.sigmoid = softmax, sigmoid
        if isinstance(taps, str):
            taps = [taps]
        self.side_heads = SideHeads(spatial_dims, in_channels, out_channels, taps)
        size = ensure_tuple_rep(patch_size, spatial_dims)
        if any(int(s) < 1 for s in size):
            raise ValueError(f"DeepDistributionLoss patch_size must be >= 1, got {patch_size}")
        self.patch_size = tuple(int(s) for s in size)
        self.num_classes = int(out_channels)
        self.activation = activation

    @property
    def required_teacher_taps(self) -> tuple[str, ...]:
        return ()

    @property
    def required_student_taps(self) -> tuple[str, ...]:
        return self.side_heads.taps

    def side_outputs(self, features: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Side-output logits ``{tap: (B, K, *size)}``."""
        missing = [t for t in self.side_heads.taps if t not in features]
        if missing:
            raise ConfigKeyError(f"DSKD DDL needs student taps {missing}; available student taps: {sorted(features)}")
        return self.side_heads(features, size)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        target = label_to_onehot(inputs.label, self.num_classes)
        outputs = self.side_outputs(inputs.student_features, target.shape[2:])
        losses = [
            patch_distribution_kl(logits, target, self.patch_size, self.activation) for logits in outputs.values()
        ]
        return torch.stack(losses).mean()


class PixelwiseSelfDistillation(KnowledgeDistillation):
    """PSDL of DSKD (Lin 2025, arXiv 2509.03173): pixel-wise KL from the student's self-teacher.

    The self-teacher is a copy of the student network (same architecture) that
    :class:`lightvessel_monai.handlers.SelfTeacherHandler` keeps as an EMA of the student's weights or as its
    previous-epoch snapshot. It is run here in eval mode under ``torch.no_grad()`` on ``inputs.image``; it is an
    :attr:`external_module`, so it is neither in the student's optimiser nor reached by back-propagation.
    Needs no separate teacher network.

    Args:
        self_teacher: the self-teacher network, e.g. from
            :func:`lightvessel_monai.handlers.self_teacher.make_self_teacher`.
        temperature, softmax, sigmoid, warmup_iterations: as :class:`~lightvessel_monai.losses.KnowledgeDistillation`
            (but ``T = 1`` by default: PSDL matches the self-teacher's plain probabilities).
    """

    external_modules = ("self_teacher",)
    method = "PSDL"

    def __init__(
        self,
        self_teacher: nn.Module,
        temperature: float = 1.0,
        softmax: bool = True,
        sigmoid: bool = False,
        warmup_iterations: int = 0,
    ) -> None:
        super().__init__(temperature, softmax, sigmoid, warmup_iterations)
        if not isinstance(self_teacher, nn.Module):
            raise TypeError(f"self_teacher must be an nn.Module, got {type(self_teacher).__name__}")
        self.self_teacher = self_teacher
        self.self_teacher.eval()
        self.self_teacher.requires_grad_(False)

    def target_logits(self, inputs: DistillationInputs) -> torch.Tensor:
        self.self_teacher.eval()  # a parent .train() call must not switch dropout/BN of the self-teacher
        with torch.no_grad():
            out = self.self_teacher(inputs.image)
        if isinstance(out, (tuple, list)):  # networks with deep-supervision outputs: the first is the prediction
            out = out[0]
        if out.shape != inputs.student_pred.shape:
            raise ValueError(
                f"self-teacher output {tuple(out.shape)} differs from the student's "
                f"{tuple(inputs.student_pred.shape)}: the self-teacher must be a copy of the student"
            )
        return out
