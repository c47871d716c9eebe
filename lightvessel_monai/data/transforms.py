"""Dictionary transforms for fundus images and field-of-view (FOV) masks, dimension-agnostic.

* :class:`FundusToVesselImaged`: one colour channel of a fundus photograph (the green one by default), inverted so that
  vessels are bright like contrast-filled vessels in an angiogram, standardised over the FOV pixels (zero mean, unit
  standard deviation) and set to 0 outside the FOV. Green-channel input is the usual choice for retinal vessels (it has
  the best vessel/background contrast), e.g. Staal et al., "Ridge-based vessel segmentation in color images of the
  retina", IEEE TMI 23(4), 2004 (the DRIVE paper).
* :class:`FundusFOVd`: estimates the FOV by thresholding one channel when the data has no FOV mask (inference on bare
  images); the dark surround of a fundus camera image is below about 20 of 255 in the red channel.
* :class:`MaskOutsided`: sets a one-hot prediction/label (or an image, or a class-index map) to background outside the
  FOV, so that metrics computed afterwards only count what lies inside it.

Shapes are channel-first, without a batch: ``(C, H, W)`` in 2D and ``(C, H, W, D)`` in 3D; masks are ``(1, *spatial)``
or ``(*spatial)``, and a pixel is inside where the mask is ``> 0`` (so ``{0, 1}`` and ``{0, 255}`` masks both work).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor, ensure_tuple_rep

from lightvessel_monai.errors import DataError

__all__ = ["FundusFOVd", "FundusToVesselImaged", "MaskOutsided", "fundus_to_vessel_image", "mask_outside"]


def _name(data: Any) -> str:
    """The source file of a MetaTensor, for messages ("" when unknown)."""
    meta = getattr(data, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return f" ({name})" if name else ""


def _inside(mask: Any, reference: torch.Tensor, what: str) -> torch.Tensor:
    """``mask > 0`` as a bool tensor ``(1, *spatial)`` on the device of ``reference`` ``(C, *spatial)``."""
    m = convert_to_tensor(mask, track_meta=False, device=reference.device) > 0
    if m.ndim == reference.ndim - 1:
        m = m.unsqueeze(0)
    if m.ndim != reference.ndim or m.shape[0] != 1 or m.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"{what} has shape {tuple(m.shape)}, expected (1, {', '.join(map(str, reference.shape[1:]))}) "
            f"or the spatial shape alone"
        )
    return m


def fundus_to_vessel_image(
    image: Any, fov: Any, channel: int = 1, invert: bool = True, outside: str = "zero"
) -> torch.Tensor:
    """Channel ``channel`` of ``image``, negated if ``invert``, standardised over the FOV and zero outside it.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)``, e.g. an RGB fundus photograph ``(3, H, W)``.
        fov: the field of view, ``(1, *spatial)`` or ``(*spatial)``; inside where ``> 0``.
        channel: the channel kept (1 = green for RGB).
        invert: negate the channel, so that dark vessels become bright. Negating before standardising is the
            same as standardising ``255 - x``.
        outside: ``"zero"`` sets the pixels outside the FOV to 0; ``"keep"`` standardises them with the FOV's
            statistics too (for a frame whose outside was filled with a continuation of the field, see
            :class:`lightvessel_monai.data.field_of_view.FillOutsided`, so that no step appears at the FOV's edge).

    Returns:
        float32 ``(1, *spatial)`` (a MetaTensor with ``image``'s metadata when it is one): over the FOV pixels its mean
        is 0 and its population standard deviation 1 (a constant FOV is only centred); 0 outside the FOV, or
        standardised alike with ``outside="keep"``.

    Raises:
        ValueError: ``channel`` is out of range, or ``fov`` does not match the spatial shape.
        DataError: the FOV holds no pixel.
    """
    if outside not in ("zero", "keep"):
        raise ValueError(f"outside must be 'zero' or 'keep', got {outside!r}")
    img = convert_to_tensor(image, track_meta=get_track_meta())
    if not -img.shape[0] <= channel < img.shape[0]:
        raise ValueError(f"channel {channel} is out of range for an image with {img.shape[0]} channels{_name(image)}")
    channel %= img.shape[0]
    x = img[channel : channel + 1].to(torch.float32)
    inside = _inside(fov, x, "fov")
    if invert:
        x = -x
    plain = x.as_tensor() if isinstance(x, MetaTensor) else x
    values = plain[inside].double()  # float64 sums: a 3D FOV may hold millions of voxels
    if values.numel() == 0:
        raise DataError(f"the field-of-view mask is empty{_name(image)}")
    mean, std = values.mean(), values.std(unbiased=False)
    scale = std if std > 0 else torch.ones_like(std)
    standardised = (x - mean.float()) / scale.float()
    if outside == "keep":
        return standardised
    return torch.where(inside, standardised, torch.zeros((), dtype=x.dtype, device=x.device))


def mask_outside(data: Any, mask: Any, one_hot: bool = True) -> torch.Tensor:
    """Set ``data`` ``(C, *spatial)`` to background where ``mask`` is 0.

    With ``one_hot`` (one-hot or probability maps, ``C >= 2``) the background is class 0: channel 0 becomes 1 and every
    other channel 0. Without it (an image, a binary mask, a class-index map) every channel becomes 0.
    """
    t = convert_to_tensor(data, track_meta=get_track_meta())
    inside = _inside(mask, t, "mask")
    if one_hot:
        if t.shape[0] < 2:
            raise ValueError(f"one_hot=True needs at least 2 channels (background first), got shape {tuple(t.shape)}")
        background = torch.zeros((t.shape[0],) + (1,) * (t.ndim - 1), dtype=t.dtype, device=t.device)
        background[0] = 1
    else:
        background = torch.zeros((), dtype=t.dtype, device=t.device)
    return torch.where(inside, t, background)


class FundusToVesselImaged(MapTransform):
    """Dictionary version of :func:`fundus_to_vessel_image`: replaces each of ``keys`` by its vessel image.

    Args:
        keys: the image keys, e.g. ``"image"`` holding an RGB fundus photograph ``(3, H, W)``.
        fov_key: the key of the FOV mask ``(1, *spatial)``.
        channel: the channel kept (1 = green).
        invert: negate the channel so that vessels are bright.
        outside: ``"zero"`` (0 outside the FOV) or ``"keep"`` (standardised with the FOV's statistics).
        allow_missing_keys: skip absent ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        fov_key: str = "fov",
        channel: int = 1,
        invert: bool = True,
        outside: str = "zero",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if outside not in ("zero", "keep"):
            raise ValueError(f"FundusToVesselImaged: outside must be 'zero' or 'keep', got {outside!r}")
        self.fov_key, self.channel, self.invert, self.outside = fov_key, channel, invert, outside

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.fov_key not in d:
            raise KeyError(f"FundusToVesselImaged: no field-of-view key '{self.fov_key}' in the data (keys: {list(d)})")
        for key in self.key_iterator(d):
            d[key] = fundus_to_vessel_image(d[key], d[self.fov_key], self.channel, self.invert, self.outside)
        return d


class FundusFOVd(MapTransform):
    """Adds a field-of-view mask ``channel > threshold`` of the image ``keys`` as ``fov_key`` when it is absent.

    For inference on bare fundus photographs, which come without the FOV mask of the training data. On the 20 DRIVE
    training images, ``red > 20`` (of 255) differs from the provided masks on 0.13 % of the pixels on average (0.8 %
    at most). With the mask already present (or ``overwrite=False``) nothing changes.

    Args:
        keys: the one image key, e.g. ``"image"`` ``(C, *spatial)`` with raw intensities.
        fov_key: where to put the mask, float ``(1, *spatial)`` in ``{0, 1}``.
        channel: the channel thresholded (0 = red).
        threshold: in the image's raw intensity units.
        overwrite: replace an existing mask.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        fov_key: str = "fov",
        channel: int = 0,
        threshold: float = 20.0,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"FundusFOVd estimates one mask from one image key, got keys {list(self.keys)}")
        self.fov_key, self.channel, self.threshold, self.overwrite = fov_key, channel, threshold, overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.fov_key in d and not self.overwrite:
            return d
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=get_track_meta())
            if not -img.shape[0] <= self.channel < img.shape[0]:
                raise ValueError(f"FundusFOVd: channel {self.channel} is out of range for '{key}' of shape {img.shape}")
            c = self.channel % img.shape[0]
            d[self.fov_key] = (img[c : c + 1] > self.threshold).to(torch.float32)
        return d


class MaskOutsided(MapTransform):
    """Dictionary version of :func:`mask_outside`: sets each of ``keys`` to background outside ``mask_key``.

    Used after ``AsDiscreted(to_onehot=...)`` in validation so that Dice (and any metric) is computed inside the FOV:
    pixels outside it become true negatives of every foreground class, which leaves foreground Dice, sensitivity and
    the Hausdorff distance as if only the FOV existed (specificity and accuracy still count them, so compute those from
    the FOV pixels alone, see :func:`lightvessel_monai.metrics.segmentation_metrics`).

    Args:
        keys: e.g. ``["pred", "label"]``, each ``(C, *spatial)``.
        mask_key: the mask, ``(1, *spatial)`` or ``(*spatial)``, inside where ``> 0``.
        one_hot: per key or for all: ``True`` for one-hot/probability maps (background = channel 0 set to 1),
            ``False`` for images and class-index maps (set to 0).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "fov",
        one_hot: bool | Sequence[bool] = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.one_hot = ensure_tuple_rep(one_hot, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"MaskOutsided: no mask key '{self.mask_key}' in the data (keys: {list(d)})")
        for key, one_hot in self.key_iterator(d, self.one_hot):
            d[key] = mask_outside(d[key], d[self.mask_key], one_hot)
        return d
