"""Standardise an image by the statistics of the organ it holds, and keep the organ's mask (LVSD300's liver slabs).

LVSD300's slabs are CT windowed to 8 bits and multiplied by the liver mask, so everything outside the liver is 0.
The window differs between studies: the liver's mean grey is 51-81 in the training slabs and 34-64 in the
validation ones, while the vessels' contrast, in units of the liver's own spread, is 1.4-2.5 in both. A fixed
rescale to [0, 1] hands the network the first difference; standardising inside the liver leaves only the second.
MONAI's ``NormalizeIntensityd(nonzero=True)`` standardises the non-zero voxels but leaves the outside at 0, the
liver's new mean, which erases the liver's boundary; here the whole image is shifted and scaled by the liver's
statistics, so the outside keeps its place below the liver (at ``-mean / std``, -1.5 to -1.9 on LVSD300).

Shapes are channel-first without a batch: ``(C, H, W)`` in 2D, ``(C, H, W, D)`` in 3D. The mask is ``(1, *spatial)``:
a voxel is inside where any channel is ``> threshold`` (a slab's slices do not cover the same part of the liver).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from lightvessel_monai.data.transforms import _name
from lightvessel_monai.errors import DataError

__all__ = ["StandardizeInsided", "standardize_inside"]


def standardize_inside(image: Any, threshold: float = 0.0, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image - mean) / std`` with ``mean`` and ``std`` of the values ``> threshold``, and the inside mask.

    Every channel's values above ``threshold`` enter the statistics together (one shift and scale per image: the
    slices of a slab share their window). An image with no value above ``threshold`` is a one-line
    :class:`~lightvessel_monai.errors.DataError` naming its file: there is nothing to standardise by.

    Returns:
        the standardised image (the input's type, float32) and the mask ``(1, *spatial)`` as uint8 {0, 1}.
    """
    x = convert_to_tensor(image, track_meta=False, dtype=torch.float32)
    values = x[x > threshold]
    if values.numel() < 2:
        raise DataError(f"standardize_inside: image{_name(image)} has no value above {threshold} to standardise by")
    mean, std = values.mean(), values.std()
    out = (x - mean) / torch.clamp(std, min=eps)
    mask = (x > threshold).any(dim=0, keepdim=True).to(torch.uint8)
    if isinstance(image, MetaTensor):
        out = MetaTensor(out, meta=image.meta, applied_operations=image.applied_operations)
        mask = MetaTensor(mask, meta=image.meta)
    return out, mask


class StandardizeInsided(MapTransform):
    """Dictionary version of :func:`standardize_inside`: standardise ``keys`` by their inside, and store the mask.

    The mask (``mask_key``) is where a crop's background centres can be drawn (``FgBgToIndicesd(image_key=mask_key,
    image_threshold=0)``): the standardised image has no fixed level that separates the organ from the outside.

    Args:
        keys: the image(s), ``(C, *spatial)``.
        mask_key: where the inside mask of the first key goes (``None``: not stored).
        threshold: a voxel is inside where its value is ``> threshold`` in any channel.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str | None = "inside",
        threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for index, key in enumerate(self.key_iterator(d)):
            d[key], mask = standardize_inside(d[key], self.threshold)
            if index == 0 and self.mask_key is not None:
                d[self.mask_key] = mask
        return d
