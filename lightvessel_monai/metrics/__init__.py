"""Evaluation metrics: clDice (Shit et al., CVPR 2021), per-case segmentation metrics inside an optional mask, and
GKD's Fréchet Semantic Distance between teacher and student semantic vectors."""

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
