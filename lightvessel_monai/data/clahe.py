"""Contrast-limited adaptive histogram equalisation (CLAHE) as a MONAI transform, dimension-agnostic.

X-ray angiograms differ in exposure from frame to frame and, within a frame, between the bright lung field and the
dark heart shadow; the contrast of a vessel against its own surroundings is what identifies it. CLAHE (Zuiderveld,
"Contrast limited adaptive histogram equalization", Graphics Gems IV, 1994) equalises the histogram of each tile of
the image, with the slope of the mapping clipped so that noise in flat regions is not amplified, and interpolates
between tiles. It is the usual contrast step before vessel segmentation in angiograms. The computation is
:func:`skimage.exposure.equalize_adapthist`, which handles 2D images and 3D volumes alike.

Shapes are channel-first without a batch: ``(C, H, W)`` in 2D and ``(C, H, W, D)`` in 3D; every channel is
equalised on its own. The input must lie in ``[0, 1]`` (e.g. after ``ScaleIntensityd``); the output is float32 in
``[0, 1]`` with the input's metadata.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy, convert_to_tensor
from skimage.exposure import equalize_adapthist

from lightvessel_monai.data.transforms import _name

__all__ = ["AdaptiveHistogramEqualize", "AdaptiveHistogramEqualized"]


class AdaptiveHistogramEqualize(Transform):
    """CLAHE of each channel of a ``(C, *spatial)`` image with values in ``[0, 1]``.

    Args:
        kernel_size: the tile size in pixels, one int for every spatial axis or one per axis; ``None`` is 1/8 of each
            axis (skimage's default).
        clip_limit: the clipping limit in ``[0, 1]``; higher gives more contrast (skimage's default 0.01).
        nbins: the number of histogram bins.
    """

    def __init__(self, kernel_size: int | Sequence[int] | None = None, clip_limit: float = 0.01, nbins: int = 256):
        if not 0.0 <= clip_limit <= 1.0:
            raise ValueError(f"clip_limit must be in [0, 1], got {clip_limit}")
        self.kernel_size, self.clip_limit, self.nbins = kernel_size, clip_limit, nbins

    def __call__(self, img: Any) -> torch.Tensor:
        x = convert_to_numpy(img, wrap_sequence=True).astype(np.float64)
        if x.ndim < 3:
            raise ValueError(
                f"AdaptiveHistogramEqualize expects a channel-first image (C, *spatial), got {x.shape}{_name(img)}"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            # skimage would rescale silently; an unscaled image here is a pipeline error, so say so.
            raise ValueError(
                f"AdaptiveHistogramEqualize expects values in [0, 1], got [{lo:.4g}, {hi:.4g}]{_name(img)}"
            )
        kwargs = {"kernel_size": self.kernel_size, "clip_limit": self.clip_limit, "nbins": self.nbins}
        out = np.stack([equalize_adapthist(c, **kwargs) for c in x]).astype(np.float32)
        ref = convert_to_tensor(img, track_meta=get_track_meta())
        return convert_to_dst_type(out, ref, dtype=torch.float32)[0]


class AdaptiveHistogramEqualized(MapTransform):
    """Dictionary version of :class:`AdaptiveHistogramEqualize` for the image ``keys``."""

    def __init__(
        self,
        keys: KeysCollection,
        kernel_size: int | Sequence[int] | None = None,
        clip_limit: float = 0.01,
        nbins: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.equalize = AdaptiveHistogramEqualize(kernel_size, clip_limit, nbins)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.equalize(d[key])
            except ValueError as err:
                raise ValueError(f"AdaptiveHistogramEqualized, key '{key}': {err}") from None
        return d
