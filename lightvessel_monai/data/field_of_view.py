"""The exposed field of an X-ray frame, and a fill of the rest that leaves no edge for a vessel detector to find.

An X-ray angiogram is exposed through a collimator: around the exposed field lies a dark, flat surround, and between
the two a penumbra a few pixels wide. The collimator's edge is a long, thin, high-contrast ridge, which is what a
vessel detector looks for. Two transforms deal with it:

* :class:`XrayFieldOfViewd` estimates the field from the raw frame. The surround is the dark region
  (``raw <= threshold``) that survives a morphological opening (a vessel or a catheter darker than the threshold is
  thinner than the opening's ball and is removed) and touches the border of the image; a dark blob inside the field
  (the heart shadow, a contrast-filled ostium) does not touch it and stays in the field. The field is everything else,
  less a ``margin`` of pixels along the surround (the penumbra). The image border itself is no collimator edge: the
  field runs up to it, because vessels leave the frame there (2-6 % of XCA's labelled vessel pixels lie within 8 px of
  the image border, none within 8 px of a collimator edge but for one dark vessel in frame 40).
* :class:`FillOutsided` replaces the pixels outside the field by a continuation of the field, so that neither CLAHE
  nor the network sees a step there. ``method``:

  - ``"smooth"`` (default): normalised convolution, ``G_s * (x m) / G_s * m`` with ``m`` the field mask and ``G_s``
    a Gaussian of ``sigma`` pixels. Near the field it is the local mean of the nearby field pixels; where the field
    is further away than about ``3 sigma`` the Gaussian is widened (``2 sigma``, ``4 sigma``, ...) until it reaches
    the field, and the field's mean is the last resort. Continuous at the field's boundary up to the texture, which
    it blurs away (a vessel that crosses the boundary fades instead of being extended);
  - ``"nearest"``: each outside pixel takes the value of the nearest field pixel (a vessel crossing the boundary is
    smeared outwards as a streak);
  - ``"mean"``: the field's mean (a step wherever the field near its boundary is darker or brighter than on
    average);
  - ``"zero"``: 0 (the step this module exists to avoid; kept for comparisons).

Shapes are channel-first without a batch, ``(C, H, W)`` in 2D and ``(C, H, W, D)`` in 3D (every spatial axis is
treated alike: the "border of the image" is every face of the volume); masks are ``(1, *spatial)`` float in
``{0, 1}``, inside where ``> 0``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_numpy, convert_to_tensor
from scipy import ndimage

from lightvessel_monai.data._smooth_fill import smooth_fill
from lightvessel_monai.data.transforms import _inside, _name
from lightvessel_monai.errors import DataError

__all__ = [
    "FILL_METHODS",
    "FillOutsided",
    "XrayFieldOfViewd",
    "fill_outside",
    "run_field_of_view",
    "xray_field_of_view",
]

FILL_METHODS = ("smooth", "nearest", "mean", "zero")


def _ball(radius: int, ndim: int) -> np.ndarray:
    """A Euclidean ball of ``radius`` pixels as a boolean structuring element of ``ndim`` axes."""
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(0) <= radius**2


def _touches_border(labels: np.ndarray) -> np.ndarray:
    """The label values (> 0) of ``labels`` that occur on any face of the array."""
    faces = [labels.take(index, axis=axis) for axis in range(labels.ndim) for index in (0, -1)]
    values = np.unique(np.concatenate([f.ravel() for f in faces]))
    return values[values > 0]


def xray_field_of_view(
    frame: np.ndarray,
    threshold: float = 25.0,
    opening_radius: int = 4,
    margin: int = 6,
    outside: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exposed field of one raw X-ray frame ``frame`` (``(H, W)`` or ``(H, W, D)``, raw grey values).

    Args:
        frame: the raw intensities, e.g. 8-bit grey 0-255.
        threshold: the surround is ``frame <= threshold`` (raw units).
        opening_radius: dark structures narrower than ``2 * opening_radius + 1`` pixels (vessels, a catheter) are
            removed from the surround before it is looked for; ``0`` keeps every dark pixel.
        margin: pixels within this Euclidean distance of the surround are left out of the field (the penumbra).
        outside: pixels known to be collimated whatever their value (``frame``'s shape, bool; e.g. outside a DICOM
            run's display shutter, :func:`lightvessel_monai.data.xa_dicom.shutter_inside`): added to the surround.

    Returns:
        ``(field, surround)``, boolean arrays of ``frame``'s shape: the field (less the margin) and the surround
        itself (without the margin). A frame with no surround has a field that covers the whole image.
    """
    if opening_radius < 0 or margin < 0:
        raise ValueError(f"opening_radius and margin must be >= 0, got {opening_radius} and {margin}")
    dark = np.asarray(frame) <= threshold
    if opening_radius > 0 and dark.any():
        # the world beyond the image counts as dark, so that a dark strip along the border at least
        # opening_radius + 1 pixels wide survives the opening; a vessel that leaves the frame is still removed
        r = opening_radius
        padded = np.pad(dark, r, constant_values=True)
        opened = ndimage.binary_opening(padded, structure=_ball(r, dark.ndim))
        dark = opened[tuple(slice(r, -r) for _ in range(dark.ndim))] & dark
    labels, count = ndimage.label(dark)
    surround = np.isin(labels, _touches_border(labels)) if count else np.zeros_like(dark)
    if outside is not None:
        surround = surround | np.asarray(outside, dtype=bool)
    if not surround.any():
        return np.ones_like(dark), surround
    distance = ndimage.distance_transform_edt(~surround)  # to the nearest surround pixel; the image border is no edge
    return distance > margin, surround


def run_field_of_view(
    frames: np.ndarray,
    threshold: float = 25.0,
    opening_radius: int = 4,
    margin: int = 6,
    outside: np.ndarray | None = None,
) -> np.ndarray:
    """One exposed field for a whole cine run ``frames`` ``(T, H, W)`` (raw grey values): that of its median frame.

    The collimator does not move during a run, so the field is the same in every frame. The per-pixel median over the
    frames removes most of the quantum noise that hides the surround in one frame, and is not pulled up by a very
    noisy frame (the first frame of a fluoro run is often one: in the phantom run IM1 its surround pixels reach 90 and
    its own field covers the whole image). It also costs one field per run instead of one per frame.

    ``outside`` (``(H, W)`` bool, the pixels outside the run's DICOM display shutter) is collimated by the header's
    own account: it is added to the surround, as in :func:`xray_field_of_view`, and it tells how dark this run's
    surround is. The threshold is raised to that level when it is higher: the median of those pixels plus 3 robust
    standard deviations (1.4826 MAD). IM1's surround lies at 17 +- 6, partly above XCA's 25, so at 25 its cut
    corners stayed in the field (and a student traced their edges); its threshold becomes 34.8, IM6's and IM8's stay
    25. Returns the field ``(H, W)`` bool.
    """
    median = np.median(np.asarray(frames, dtype=np.float32), axis=0)
    if outside is not None and np.any(outside):
        surround = median[np.asarray(outside, dtype=bool)]
        level = np.median(surround)
        threshold = max(float(threshold), float(level + 3 * 1.4826 * np.median(np.abs(surround - level))))
    field, _ = xray_field_of_view(median, threshold, opening_radius, margin, outside)
    return field


class XrayFieldOfViewd(MapTransform):
    """Adds the exposed field of the image ``keys`` as ``fov_key`` (see :func:`xray_field_of_view`).

    Args:
        keys: the one image key, ``(C, H, W)`` or ``(C, H, W, D)`` with raw intensities.
        fov_key: where to put the mask, float32 ``(1, *spatial)`` in ``{0, 1}`` with the image's metadata.
        channel: the channel thresholded.
        threshold, opening_radius, margin: as in :func:`xray_field_of_view`.
        overwrite: replace a mask already present (default: keep it, e.g. one read from a file).

    Raises:
        DataError: the field is empty (a frame darker than ``threshold`` everywhere), naming the file.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        fov_key: str = "fov",
        channel: int = 0,
        threshold: float = 25.0,
        opening_radius: int = 4,
        margin: int = 6,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"XrayFieldOfViewd estimates one mask from one image key, got keys {list(self.keys)}")
        if opening_radius < 0 or margin < 0:
            raise ValueError(f"opening_radius and margin must be >= 0, got {opening_radius} and {margin}")
        self.fov_key, self.channel, self.threshold = fov_key, channel, threshold
        self.opening_radius, self.margin, self.overwrite = opening_radius, margin, overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.fov_key in d and not self.overwrite:
            return d
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=get_track_meta())
            if not -img.shape[0] <= self.channel < img.shape[0]:
                raise ValueError(
                    f"XrayFieldOfViewd: channel {self.channel} is out of range for '{key}' of shape {img.shape}"
                )
            frame = convert_to_numpy(img[self.channel % img.shape[0]])
            field, _ = xray_field_of_view(frame, self.threshold, self.opening_radius, self.margin)
            if not field.any():
                raise DataError(f"no exposed field in '{key}'{_name(d[key])}: every pixel is <= {self.threshold}")
            d[self.fov_key] = convert_to_dst_type(field[None].astype(np.float32), img, dtype=torch.float32)[0]
        return d


def fill_outside(image: Any, mask: Any, method: str = "smooth", sigma: float = 8.0) -> torch.Tensor:
    """``image`` ``(C, *spatial)`` with every pixel outside ``mask`` replaced by a fill of ``method``.

    Args:
        image: any real-valued image; every channel is filled from its own field pixels.
        mask: the field, ``(1, *spatial)`` or ``(*spatial)``, inside where ``> 0``.
        method: one of :data:`FILL_METHODS` (see the module docstring).
        sigma: the Gaussian's standard deviation in pixels for ``"smooth"``.

    Returns:
        float32, ``image``'s shape and metadata; the field pixels are unchanged.
    """
    if method not in FILL_METHODS:
        raise ValueError(f"fill method must be one of {FILL_METHODS}, got {method!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    ref = convert_to_tensor(image, track_meta=get_track_meta())
    inside = convert_to_numpy(_inside(mask, ref, "mask"))[0]
    if not inside.any():
        raise DataError(f"the field-of-view mask is empty{_name(image)}")
    x = convert_to_numpy(ref).astype(np.float64)
    if inside.all():
        return convert_to_dst_type(x.astype(np.float32), ref, dtype=torch.float32)[0]
    out = np.empty_like(x)
    if method == "nearest":
        nearest = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
    for c, channel in enumerate(x):
        if method == "smooth":
            fill = smooth_fill(channel, inside, sigma)
        elif method == "nearest":
            fill = channel[tuple(nearest)]
        elif method == "mean":
            fill = np.full(channel.shape, channel[inside].mean())
        else:
            fill = np.zeros(channel.shape)
        out[c] = np.where(inside, channel, fill)
    return convert_to_dst_type(out.astype(np.float32), ref, dtype=torch.float32)[0]


class FillOutsided(MapTransform):
    """Dictionary version of :func:`fill_outside`: fills each of ``keys`` outside ``mask_key``.

    Args:
        keys: the image keys, ``(C, *spatial)``.
        mask_key: the field mask ``(1, *spatial)``.
        method: one of :data:`FILL_METHODS`.
        sigma: the Gaussian's standard deviation in pixels for ``"smooth"``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "fov",
        method: str = "smooth",
        sigma: float = 8.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if method not in FILL_METHODS:
            raise ValueError(f"FillOutsided: method must be one of {FILL_METHODS}, got {method!r}")
        self.mask_key, self.method, self.sigma = mask_key, method, sigma

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"FillOutsided: no mask key '{self.mask_key}' in the data (keys: {list(d)})")
        for key in self.key_iterator(d):
            d[key] = fill_outside(d[key], d[self.mask_key], self.method, self.sigma)
        return d
