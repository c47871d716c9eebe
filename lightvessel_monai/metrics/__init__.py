"""Evaluation metrics: clDice (Shit et al., CVPR 2021) and per-case segmentation metrics inside an optional mask.
GKD's Fréchet Semantic Distance is in :mod:`lightvessel_monai.gkd.semantic_distance`."""

from lightvessel_monai.metrics.cldice import ClDiceMetric, cldice_score, compute_cldice, skeleton
from lightvessel_monai.metrics.segmentation import METRIC_NAMES, segmentation_metrics

__all__ = [
    "METRIC_NAMES",
    "ClDiceMetric",
    "cldice_score",
    "compute_cldice",
    "segmentation_metrics",
    "skeleton",
]
