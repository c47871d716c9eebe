"""clDice, the centerline Dice of Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular
Structure Segmentation", CVPR 2021 (Eq. 1-3), as a metric on binary masks in 2D and 3D.

With ``P`` the predicted mask, ``L`` the true mask and ``S(.)`` the skeleton (morphological thinning,
:func:`skimage.morphology.skeletonize`: Zhang's method in 2D, Lee's in 3D, as in the paper's evaluation):

* topology precision ``Tprec = |S(P) ∩ L| / |S(P)|`` (how much of the predicted centerline lies in the true vessels),
* topology sensitivity ``Tsens = |S(L) ∩ P| / |S(L)|`` (how much of the true centerline is covered),
* ``clDice = 2 * Tprec * Tsens / (Tprec + Tsens)``.

Empty cases, per image and class (the convention of MONAI's ``DiceMetric``):

* no true foreground: ``nan`` with ``ignore_empty=True`` (the case is left out of the mean), else 1 when the
  prediction is empty too and 0 when it is not;
* true foreground but an empty prediction: 0 (``Tsens = 0``);
* ``Tprec + Tsens = 0``: 0.

A mask that is not empty always has a non-empty skeleton (thinning keeps one pixel per component); should the thinning
ever return nothing, the mask itself stands in for its skeleton.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from skimage.morphology import skeletonize

__all__ = ["ClDiceMetric", "cldice_score", "compute_cldice", "skeleton"]


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Boolean skeleton of a 2D ``(H, W)`` or 3D ``(H, W, D)`` boolean mask (same shape)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"skeleton needs a 2D or 3D mask, got shape {mask.shape}")
    if not mask.any():
        return mask.copy()
    skel = skeletonize(mask)
    return skel if skel.any() else mask.copy()


def cldice_score(pred: np.ndarray, label: np.ndarray, ignore_empty: bool = True) -> float:
    """clDice of one 2D ``(H, W)`` or 3D ``(H, W, D)`` pair of boolean masks (see the module docstring)."""
    p, y = np.asarray(pred, dtype=bool), np.asarray(label, dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"pred and label shapes differ: {p.shape} vs {y.shape}")
    if not y.any():
        return float("nan") if ignore_empty else float(not p.any())
    if not p.any():
        return 0.0
    s_p, s_y = skeleton(p), skeleton(y)
    tprec = np.count_nonzero(s_p & y) / np.count_nonzero(s_p)
    tsens = np.count_nonzero(s_y & p) / np.count_nonzero(s_y)
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


def compute_cldice(
    y_pred: torch.Tensor, y: torch.Tensor, include_background: bool = True, ignore_empty: bool = True
) -> torch.Tensor:
    """clDice of each image and class of one-hot masks.

    Args:
        y_pred: binarised prediction ``(B, K, H, W)`` or ``(B, K, H, W, D)``, e.g. ``AsDiscrete(argmax=True,
            to_onehot=K)``; values ``> 0.5`` are foreground.
        y: the one-hot ground truth, same shape.
        include_background: keep channel 0 (``False`` drops it, as for MONAI's ``DiceMetric``).
        ignore_empty: ``nan`` where ``y`` has no foreground (else 1 or 0, see the module docstring).

    Returns:
        float32 ``(B, K)`` (``(B, K - 1)`` without background) on ``y_pred``'s device.
    """
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y shapes differ: {tuple(y_pred.shape)} vs {tuple(y.shape)}")
    if y_pred.ndim not in (4, 5):
        raise ValueError(f"y_pred must be (B, K, H, W) or (B, K, H, W, D), got shape {tuple(y_pred.shape)}")
    first = 0 if include_background else 1
    p = (y_pred.detach() > 0.5).cpu().numpy()
    t = (y.detach() > 0.5).cpu().numpy()
    scores = [
        [cldice_score(p[b, k], t[b, k], ignore_empty) for k in range(first, p.shape[1])] for b in range(p.shape[0])
    ]
    return torch.tensor(scores, dtype=torch.float32, device=y_pred.device).reshape(p.shape[0], p.shape[1] - first)


class ClDiceMetric(CumulativeIterationMetric):
    """Cumulative clDice over iterations, used like ``monai.metrics.DiceMetric``.

    Call it with ``y_pred`` and ``y`` one-hot ``(B, K, *spatial)`` (or lists of ``(K, *spatial)``), then
    :meth:`aggregate`; ``nan`` entries (empty ground truth with ``ignore_empty``) are left out of the reduction.

    Args:
        include_background: keep channel 0.
        reduction: a :class:`monai.utils.MetricReduction` (default ``"mean"``: over images and classes).
        get_not_nans: :meth:`aggregate` also returns the count of non-nan values.
        ignore_empty: see :func:`compute_cldice`.
    """

    def __init__(
        self,
        include_background: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        ignore_empty: bool = True,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.ignore_empty = ignore_empty

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("ClDiceMetric needs the ground truth y")
        return compute_cldice(y_pred, y, self.include_background, self.ignore_empty)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``(N, K)`` scores; ``reduction`` overrides the one given at construction."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("ClDiceMetric has no results to aggregate; call it on some data first")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
