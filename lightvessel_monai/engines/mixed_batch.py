"""The batch a distillation step trains on: labelled samples, unlabelled samples, and mixup or CutMix between them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor, list_data_collate
from monai.engines.utils import default_prepare_batch

from lightvessel_monai.data.unlabeled import UNLABELED, UnlabeledStream
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.pipeline.distributed import get_rank, get_world_size, is_distributed

__all__ = ["MIX_MODES", "MixedBatch", "cutmix", "mixup"]

logger = logging.getLogger(__name__)

MIX_MODES = ("mixup", "cutmix")
"""The values of ``mixup_mode``."""


def _signed(label: torch.Tensor) -> torch.Tensor:
    """The label in a dtype that holds -1 (an unsigned or boolean label becomes float32)."""
    return (
        label
        if label.is_floating_point() or label.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)
        else (label.float())
    )


def _plain(value: Any) -> torch.Tensor:
    """A batch tensor without MONAI meta data (the two sources' meta data cannot be merged)."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def _partners(batch: int, prob: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: whether it is mixed, ``lam ~ Beta(alpha, alpha)`` folded to ``max(lam, 1 - lam)`` (1 where not
    mixed), and its partner, the next sample on a random cycle through the batch (never itself, so ``prob`` 1 mixes
    every sample of a batch of two or more). All draws come from torch's global CPU RNG (a resumed run repeats them).
    """
    mixed = torch.rand(batch) < prob
    lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((batch,))
    lam = torch.maximum(lam, 1 - lam)
    order = torch.randperm(batch)
    partner = torch.empty(batch, dtype=torch.long)
    partner[order] = order.roll(-1)
    mixed &= partner != torch.arange(batch)  # a batch of one has no partner
    return mixed, torch.where(mixed, lam, torch.ones_like(lam)), partner


def mixup(
    image: torch.Tensor, label: torch.Tensor, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each sample, with probability ``prob``, with another sample of the batch: ``lam * x_i + (1 - lam) * x_j``.

    ``lam ~ Beta(alpha, alpha)`` per sample, folded to ``max(lam, 1 - lam)`` so that sample ``i`` dominates its mix,
    and ``j`` the next sample on a random cycle through the batch. A mixed sample loses its label: its label becomes
    :data:`~lightvessel_monai.data.unlabeled.UNLABELED`, so the segmentation loss skips it and every distillation
    term is matched to the teacher's output on the mixed input (Beyer et al., CVPR 2022: function matching). No
    label is mixed: a blend of two angiograms has no annotation.

    Shapes: ``image`` ``(B, C, H, W)`` or ``(B, C, D, H, W)``, ``label`` ``(B, 1 or K, ...)``.

    Returns:
        the mixed image, the label, and per sample ``lam``, the partner index and whether it was mixed (``(B,)``).
    """
    mixed, lam, partner = _partners(image.shape[0], prob, alpha)
    w = lam.to(image.device, image.dtype).reshape((-1,) + (1,) * (image.ndim - 1))
    out = w * image + (1 - w) * image[partner.to(image.device)]
    new_label = _signed(label).clone()
    new_label[mixed.to(label.device)] = UNLABELED
    return out, new_label, lam, partner, mixed


def cutmix(
    image: torch.Tensor, label: torch.Tensor, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste, with probability ``prob``, a box of another sample of the batch into each sample (Yun et al., ICCV 2019;
    for segmentation, French et al., BMVC 2020).

    The box covers a share ``1 - lam`` of the patch (``lam`` as in :func:`mixup`, so the sample keeps the larger
    part): each side is ``(1 - lam) ** (1 / spatial_dims)`` of the patch's side, rounded, and the box lies wholly
    inside the patch at a uniformly drawn corner; the returned ``lam`` is the share actually kept. Unlike a blend, a
    pasted box has an exact annotation: the label is pasted with the image, so a sample whose two parts are both
    annotated keeps a label and stays under the segmentation loss, while one with an unlabelled part carries -1 in
    that part, which makes the whole sample unlabelled
    (:func:`~lightvessel_monai.data.unlabeled.labelled_samples`). The distillation target is the teacher's output on
    the pasted input, as with mixup.

    Shapes: ``image`` ``(B, C, H, W)`` or ``(B, C, D, H, W)``, ``label`` ``(B, 1 or K, ...)`` of the same spatial size.

    Returns:
        as :func:`mixup`: the image, the label, ``lam`` (the kept share), the partner and whether it was mixed.
    """
    mixed, lam, partner = _partners(image.shape[0], prob, alpha)
    size = image.shape[2:]
    out, new_label = image.clone(), _signed(label).clone()
    kept = torch.ones_like(lam)
    side = (1 - lam) ** (1.0 / len(size))
    for i in torch.nonzero(mixed).flatten().tolist():
        box = [min(n, round(float(side[i]) * n)) for n in size]
        start = [int(torch.randint(0, n - b + 1, (1,))) for n, b in zip(size, box, strict=True)]
        region = (slice(None),) + tuple(slice(a, a + b) for a, b in zip(start, box, strict=True))
        j = int(partner[i])
        out[i][region] = image[j][region]
        new_label[i][region] = _signed(label[j])[region]
        kept[i] = 1 - float(torch.tensor(box).prod()) / float(torch.tensor(size).prod())
    return out, new_label, kept, partner, mixed


class MixedBatch:
    """A ``prepare_batch`` for :class:`~monai.engines.SupervisedTrainer`: the labelled batch, plus this step's
    unlabelled samples, then mixup or CutMix.

    The labelled batch comes from the DataLoader unchanged, so a run with unlabelled images sees the same labelled
    batches as one without. ``unlabeled`` (an :class:`~lightvessel_monai.data.unlabeled.UnlabeledStream`) appends
    its samples after them, with a label of -1. With ``mixup_prob`` > 0, :func:`mixup` (``mixup_mode`` "mixup")
    blends samples of the joint batch (labelled with unlabelled too) and drops the labels of the blended ones, or
    :func:`cutmix` ("cutmix") pastes boxes between them, with their labels.

    The last mixup draw is kept in :attr:`last_mix` (``lam``, ``partner``, ``mixed``) for tests and logging.

    Args:
        unlabeled: the unlabelled stream, or ``None``.
        mixup_prob: the share of samples that are mixed (0: no mixup; Beyer et al. mix every batch).
        mixup_alpha: the Beta distribution's parameter (Beyer et al.: 1, i.e. uniform).
        mixup_mode: "mixup" (a blend) or "cutmix" (a pasted box).
    """

    def __init__(
        self,
        unlabeled: UnlabeledStream | None = None,
        mixup_prob: float = 0.0,
        mixup_alpha: float = 1.0,
        mixup_mode: str = "mixup",
    ):
        if not 0.0 <= float(mixup_prob) <= 1.0:
            raise ConfigKeyError(f"mixup_prob must be in [0, 1], got {mixup_prob}")
        if float(mixup_alpha) <= 0:
            raise ConfigKeyError(f"mixup_alpha must be > 0, got {mixup_alpha}")
        if mixup_mode not in MIX_MODES:
            raise ConfigKeyError(f"mixup_mode must be one of {MIX_MODES}, got {mixup_mode!r}")
        self.mix = mixup if mixup_mode == "mixup" else cutmix
        self.unlabeled = unlabeled
        self.mixup_prob = float(mixup_prob)
        self.mixup_alpha = float(mixup_alpha)
        self.last_mix: dict[str, torch.Tensor] | None = None
        if self.mixup_prob > 0:  # say what the step does: a mixed sample changes what the segmentation loss sees
            logger.info(f"{mixup_mode} on {self.mixup_prob:.0%} of each step's samples, lambda ~ Beta({mixup_alpha:g})")

    def state_dict(self) -> dict[str, Any]:
        return {"unlabeled": self.unlabeled.state_dict()} if self.unlabeled is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.unlabeled is not None and "unlabeled" in state:
            self.unlabeled.load_state_dict(state["unlabeled"])

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.unlabeled is not None:
            extra = list_data_collate(self.unlabeled.draw(get_rank(), get_world_size() if is_distributed() else 1))
            image = torch.cat([_plain(batchdata["image"]), _plain(extra["image"]).to(batchdata["image"].dtype)])
            label = _signed(_plain(batchdata["label"]))
            batchdata = {"image": image, "label": torch.cat([label, _plain(extra["label"]).to(label.dtype)])}
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.mixup_prob > 0:
            image, label, lam, partner, mixed = self.mix(image, label, self.mixup_prob, self.mixup_alpha)
            self.last_mix = {"lam": lam, "partner": partner, "mixed": mixed}
        return image, label
