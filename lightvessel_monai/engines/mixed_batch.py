"""The batch a distillation step trains on: labelled samples, unlabelled samples, and mixup between them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor, list_data_collate
from monai.engines.utils import default_prepare_batch

from lightvessel_monai.data.unlabeled import UNLABELED, UnlabeledStream
from lightvessel_monai.distributed import get_rank, get_world_size, is_distributed

__all__ = ["MixedBatch", "mixup"]


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


def mixup(
    image: torch.Tensor, label: torch.Tensor, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each sample, with probability ``prob``, with another sample of the batch: ``lam * x_i + (1 - lam) * x_j``.

    ``lam ~ Beta(alpha, alpha)`` per sample, folded to ``max(lam, 1 - lam)`` so that sample ``i`` dominates its mix,
    and ``j`` the next sample on a random cycle through the batch (never ``i`` itself, so ``prob`` 1 mixes every
    sample of a batch of two or more). A mixed sample loses its
    label: its label becomes :data:`~lightvessel_monai.data.unlabeled.UNLABELED`, so the segmentation loss skips it
    and every distillation term is matched to the teacher's output on the mixed input (Beyer et al., CVPR 2022:
    function matching). No label is mixed. All random draws come from torch's global RNG on the CPU (a resumed run
    repeats them).

    Shapes: ``image`` ``(B, C, H, W)`` or ``(B, C, D, H, W)``, ``label`` ``(B, 1 or K, ...)``.

    Returns:
        the mixed image, the label, and per sample ``lam``, the partner index and whether it was mixed (``(B,)``).
    """
    batch = image.shape[0]
    mixed = torch.rand(batch) < prob
    lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((batch,))
    lam = torch.maximum(lam, 1 - lam)
    # a random cycle through the batch: nobody is their own partner, so prob 1 mixes every sample
    order = torch.randperm(batch)
    partner = torch.empty(batch, dtype=torch.long)
    partner[order] = order.roll(-1)
    mixed &= partner != torch.arange(batch)  # a batch of one has no partner
    lam = torch.where(mixed, lam, torch.ones_like(lam))
    shape = (batch,) + (1,) * (image.ndim - 1)
    w = lam.to(image.device, image.dtype).reshape(shape)
    out = w * image + (1 - w) * image[partner.to(image.device)]
    new_label = _signed(label).clone()
    new_label[mixed.to(label.device)] = UNLABELED
    return out, new_label, lam, partner, mixed


class MixedBatch:
    """A ``prepare_batch`` for :class:`~monai.engines.SupervisedTrainer`: the labelled batch, plus this step's
    unlabelled samples, then mixup.

    The labelled batch comes from the DataLoader unchanged, so a run with unlabelled images sees the same labelled
    batches as one without. ``unlabeled`` (an :class:`~lightvessel_monai.data.unlabeled.UnlabeledStream`) appends
    its samples after them, with a label of -1. With ``mixup_prob`` > 0, :func:`mixup` mixes samples of the joint
    batch (labelled with unlabelled too) and drops the labels of the mixed ones.

    The last mixup draw is kept in :attr:`last_mix` (``lam``, ``partner``, ``mixed``) for tests and logging.

    Args:
        unlabeled: the unlabelled stream, or ``None``.
        mixup_prob: the share of samples that are mixed (0: no mixup; Beyer et al. mix every batch).
        mixup_alpha: the Beta distribution's parameter (Beyer et al.: 1, i.e. uniform).
    """

    def __init__(self, unlabeled: UnlabeledStream | None = None, mixup_prob: float = 0.0, mixup_alpha: float = 1.0):
        if not 0.0 <= float(mixup_prob) <= 1.0:
            raise ValueError(f"mixup_prob must be in [0, 1], got {mixup_prob}")
        if float(mixup_alpha) <= 0:
            raise ValueError(f"mixup_alpha must be > 0, got {mixup_alpha}")
        self.unlabeled = unlabeled
        self.mixup_prob = float(mixup_prob)
        self.mixup_alpha = float(mixup_alpha)
        self.last_mix: dict[str, torch.Tensor] | None = None

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
            image, label, lam, partner, mixed = mixup(image, label, self.mixup_prob, self.mixup_alpha)
            self.last_mix = {"lam": lam, "partner": partner, "mixed": mixed}
        return image, label
