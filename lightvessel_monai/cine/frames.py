"""The bundle's own preprocessing, applied to each decoded frame of a cine run.

The frames of a run are already in memory (decoded once by pydicom), so the config's ``preprocessing`` runs without
its ``LoadImaged``: each frame enters as the MetaTensor ``LoadImaged`` would have made of a one-frame PNG, in MONAI's
axis order (first spatial axis = columns, as MONAI's PIL and ITK readers give it), so that the network sees a frame
exactly as it sees the same picture read from a PNG. Everything after ``LoadImaged`` (XCA: the exposed field, the
fill outside it, CLAHE, inversion and standardisation) is the config's, unchanged.

One field per run: when the preprocessing holds an :class:`~lightvessel_monai.data.field_of_view.XrayFieldOfViewd`,
its field is computed once for the run (:func:`~lightvessel_monai.data.field_of_view.run_field_of_view`, with that
transform's settings, on the median frame, inside the run's display shutter) and handed to every frame under its
``fov_key``; the transform keeps a field it is given (``overwrite`` false).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged

from lightvessel_monai.data.field_of_view import XrayFieldOfViewd, run_field_of_view
from lightvessel_monai.data.xa_dicom import CineRun, shutter_inside
from lightvessel_monai.errors import ConfigKeyError

__all__ = ["FramePipeline", "grey_frames"]


def grey_frames(frames: np.ndarray, bits_stored: int) -> np.ndarray:
    """``frames`` as float32 on the 0-255 scale of the 8-bit angiograms the networks were trained on (the raw-unit
    settings, such as the collimator threshold, keep their meaning); 8-bit runs keep their exact values."""
    grey = frames.astype(np.float32)
    if bits_stored > 8:
        grey *= np.float32(255.0 / (2**bits_stored - 1))
    return grey


class FramePipeline:
    """Per-frame preprocessing of a run: ``preprocessing`` without its loader, plus the run's field.

    Args:
        preprocessing: the bundle's ``preprocessing`` (a ``Compose`` whose loader is a ``LoadImaged`` of ``image_key``).
        image_key: the image key of ``preprocessing``.
    """

    def __init__(self, preprocessing: Callable, image_key: str = "image") -> None:
        transforms = preprocessing.flatten().transforms if isinstance(preprocessing, Compose) else [preprocessing]
        if not any(isinstance(t, LoadImaged) for t in transforms):
            raise ConfigKeyError("preprocessing has no LoadImaged: cine runs enter the pipeline in its place")
        self.transforms = Compose([t for t in transforms if not isinstance(t, LoadImaged)])
        fields = [t for t in transforms if isinstance(t, XrayFieldOfViewd)]
        self.field = fields[0] if fields else None
        self.image_key = image_key

    def run_field(self, header: Any, frames: np.ndarray) -> np.ndarray | None:
        """The exposed field of the run ``frames`` ``(T, H, W)``, ``(H, W)`` bool, or ``None`` without a field step."""
        if self.field is None:
            return None
        shutter = shutter_inside(header, frames.shape[1:])
        f = self.field
        return run_field_of_view(frames, f.threshold, f.opening_radius, f.margin, None if shutter is None else ~shutter)

    def __call__(self, run: CineRun, index: int, frame: np.ndarray, field: np.ndarray | None) -> dict:
        """Preprocess frame ``index`` (0-based) of ``run``, ``(H, W)`` from :func:`grey_frames`: the config's output,
        image ``(1, W, H)``."""
        meta = {"filename_or_obj": f"{run.path} frame {index + 1}", "original_channel_dim": "no_channel"}
        item: dict[str, Any] = {self.image_key: MetaTensor(torch.from_numpy(np.ascontiguousarray(frame.T)), meta=meta)}
        if field is not None:
            item[self.field.fov_key] = MetaTensor(torch.from_numpy(field.T[None].astype(np.float32)), meta=dict(meta))
        return self.transforms(item)
