"""Per-case segmentation metrics, optionally restricted to a mask (e.g. the field of view of a fundus image).

:func:`segmentation_metrics` gives, for one case, the foreground Dice, IoU, sensitivity, specificity, accuracy
(MONAI's ``compute_dice``, ``compute_iou``, ``get_confusion_matrix`` + ``compute_confusion_matrix_metric``),
clDice (:mod:`lightvessel_monai.metrics.cldice`) and the 95th-percentile Hausdorff distance (MONAI's
``compute_hausdorff_distance(percentile=95)``, symmetric, in ``spacing`` units). With several foreground classes each
value is the mean over the classes that are not ``nan``.

With a ``mask``, the pixel-counting metrics (Dice, IoU and the confusion-matrix ones) use only the pixels inside it:
they are gathered into ``(1, K, N)`` and fed to MONAI's functions, so specificity and accuracy are not inflated by the
easy background outside (the DRIVE convention: metrics inside the FOV). The shape-based metrics (clDice, HD95) see
``pred`` and ``label`` set to background outside the mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, get_confusion_matrix
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric
from monai.utils import convert_to_tensor

from lightvessel_monai.data.transforms import mask_outside
from lightvessel_monai.metrics.cldice import compute_cldice

__all__ = ["METRIC_NAMES", "segmentation_metrics"]

#: the keys of :func:`segmentation_metrics`, in report order
METRIC_NAMES = ("dice", "iou", "sensitivity", "specificity", "accuracy", "cldice", "hd95")


def _one_hot(data: Any, name: str) -> torch.Tensor:
    """``(1, K, *spatial)`` binarised at 0.5 as float; a single channel (a binary mask) becomes ``[1 - x, x]``."""
    t = convert_to_tensor(data, track_meta=False, dtype=torch.float32)
    if t.ndim not in (4, 5) or t.shape[0] != 1:
        raise ValueError(f"{name} must be (1, K, H, W) or (1, K, H, W, D), got shape {tuple(t.shape)}")
    t = (t > 0.5).float()
    return torch.cat([1.0 - t, t], dim=1) if t.shape[1] == 1 else t


def _inside(mask: Any, spatial: torch.Size, device: torch.device) -> torch.Tensor:
    """The mask as bool ``(*spatial)``; accepted as ``(*spatial)``, ``(1, *spatial)`` or ``(1, 1, *spatial)``."""
    m = convert_to_tensor(mask, track_meta=False, device=device) > 0
    while m.ndim > len(spatial) and m.shape[0] == 1:
        m = m[0]
    if m.shape != spatial:
        raise ValueError(f"mask has shape {tuple(m.shape)}, expected the spatial shape {tuple(spatial)}")
    if not m.any():
        raise ValueError("mask has no pixel inside; no metric can be computed")
    return m


def _mean(values: torch.Tensor) -> float:
    """Mean over the classes that are not nan (nan when all are)."""
    values = values.float().flatten()
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


def segmentation_metrics(
    pred: Any,
    label: Any,
    mask: Any | None = None,
    spacing: float | Sequence[float] | None = None,
    include_background: bool = False,
) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity, accuracy, clDice and HD95 of one case.

    Args:
        pred: the binarised prediction, one-hot ``(1, K, H, W)`` / ``(1, K, H, W, D)``, or a binary foreground mask
            ``(1, 1, ...)``; values ``> 0.5`` are foreground.
        label: the ground truth, same form and shape.
        mask: where to evaluate, ``(*spatial)``, ``(1, *spatial)`` or ``(1, 1, *spatial)``, inside where ``> 0``
            (e.g. the FOV); ``None``: everywhere.
        spacing: pixel spacing for HD95 (one number or one per spatial dim); ``None``: 1 (pixels).
        include_background: also average the metrics of class 0.

    Returns:
        ``{"dice", "iou", "sensitivity", "specificity", "accuracy", "cldice", "hd95"}`` as floats. A metric is ``nan``
        when undefined: Dice, IoU, clDice and sensitivity without true foreground, HD95 when the prediction or the
        label has no foreground (MONAI's convention).
    """
    p, y = _one_hot(pred, "pred"), _one_hot(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"pred and label shapes differ: {tuple(p.shape)} vs {tuple(y.shape)}")
    y = y.to(p.device)
    if mask is None:
        p_in, y_in, p_shape, y_shape = p.flatten(2), y.flatten(2), p, y
    else:
        inside = _inside(mask, p.shape[2:], p.device)
        p_in, y_in = p[:, :, inside], y[:, :, inside]  # (1, K, N): the pixels inside the mask
        p_shape, y_shape = mask_outside(p[0], inside)[None], mask_outside(y[0], inside)[None]

    cm = get_confusion_matrix(p_in, y_in, include_background=include_background)
    metrics = {
        "dice": compute_dice(p_in, y_in, include_background=include_background, ignore_empty=True),
        "iou": compute_iou(p_in, y_in, include_background=include_background, ignore_empty=True),
        "sensitivity": compute_confusion_matrix_metric("sensitivity", cm),
        "specificity": compute_confusion_matrix_metric("specificity", cm),
        "accuracy": compute_confusion_matrix_metric("accuracy", cm),
        "cldice": compute_cldice(p_shape, y_shape, include_background=include_background, ignore_empty=True),
    }
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument internally; the empty-mask warnings stay visible
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        metrics["hd95"] = compute_hausdorff_distance(
            p_shape, y_shape, include_background=include_background, percentile=95, spacing=spacing
        )
    return {name: _mean(metrics[name]) for name in METRIC_NAMES}
