"""GKD's Fréchet Semantic Distance between teacher and student, as a MONAI metric handler of the validation."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.handlers import IgniteMetricHandler

from lightvessel_monai.losses.gkd import GKDSemantics
from lightvessel_monai.metrics.semantic_distance import FrechetSemanticDistance

__all__ = ["SemanticDistanceHandler", "SemanticVectorsOf"]

logger = logging.getLogger(__name__)


class SemanticVectorsOf:
    """``output_transform``: an evaluator's output -> ``(student vectors, teacher vectors)``, each ``(B, D)``.

    The images of the output (``(C, H, W)`` or ``(C, D, H, W)`` per item, decollated or batched) are zero-padded to a
    multiple of ``divisor`` (so that any U-Net depth fits) and run, without gradients, through both encoders up to
    the bottleneck; the headers pool a bottleneck larger than the training patch's to their grid.
    """

    def __init__(self, semantics: GKDSemantics, divisor: int = 32) -> None:
        self.semantics = semantics
        self.divisor = int(divisor)

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(output, Mapping):
            image = torch.as_tensor(output["image"])
        elif isinstance(output, Sequence):
            image = torch.stack([torch.as_tensor(item["image"]) for item in output])
        else:
            raise TypeError(f"expected an evaluator output with 'image', got {type(output).__name__}")
        device = next(self.semantics.student_header.parameters()).device
        image = self._pad(image.as_subclass(torch.Tensor).to(device))
        with torch.no_grad():
            return self.semantics.encode("student", image), self.semantics.encode("teacher", image)

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for size in reversed(image.shape[2:]):
            extra = math.ceil(size / self.divisor) * self.divisor - size
            pad += [extra // 2, extra - extra // 2]
        return F.pad(image, pad)


class SemanticDistanceHandler(IgniteMetricHandler):
    """The teacher-student Fréchet Semantic Distance over the validation images, a metric of the evaluator.

    Listed in ``validate#evaluator``'s ``additional_metrics`` (``configs/methods/gkd.json``), so StatsHandler and
    TensorBoard report it next to the Dice at every validation, under its key (``val_semantic_distance``).

    Args:
        semantics: the shared :class:`~lightvessel_monai.losses.gkd.GKDSemantics`.
        divisor: validation images are zero-padded to a multiple of it.
    """

    def __init__(self, semantics: GKDSemantics, divisor: int = 32) -> None:
        super().__init__(
            metric_fn=FrechetSemanticDistance(),  # type: ignore[arg-type]
            output_transform=SemanticVectorsOf(semantics, divisor),
        )

    def compute(self) -> Any:
        """The distance, or NaN (with a warning, training goes on) when fewer than 2 images were validated."""
        try:
            return super().compute()
        except ValueError as error:
            logger.warning(f"Fréchet Semantic Distance not computed: {error}")
            return float("nan")
