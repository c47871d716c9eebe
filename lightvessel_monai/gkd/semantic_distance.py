"""The Fréchet Semantic Distance of GKD (Qi et al., IEEE JBHI 2024): how far the student's semantic vectors lie from
the teacher's, read as FID is read.

.. math::
    d^2 = \\|\\mu_t - \\mu_s\\|^2 + \\mathrm{Tr}\\big(\\Sigma_t + \\Sigma_s - 2 (\\Sigma_t \\Sigma_s)^{1/2}\\big)

over the two sets of semantic vectors ``(N, D)`` (:class:`~lightvessel_monai.gkd.losses.GKDSemantics`), with the
unbiased sample covariances. MONAI's ``compute_frechet_distance`` (of its FID metric) does the matrix square root.

:class:`SemanticDistanceHandler` reports it as a MONAI metric handler of the validation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.handlers import IgniteMetricHandler
from monai.metrics import Cumulative
from monai.metrics.fid import compute_frechet_distance

from lightvessel_monai.gkd.losses import GKDSemantics

__all__ = ["frechet_distance", "FrechetSemanticDistance", "SemanticVectorsOf", "SemanticDistanceHandler"]

logger = logging.getLogger(__name__)


def frechet_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The Fréchet distance between the Gaussians fitted to ``student`` ``(N, D)`` and ``teacher`` ``(M, D)``."""
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"semantic vectors must be (N, D) and (M, D) with the same D, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    if min(student.shape[0], teacher.shape[0]) < 2:
        raise ValueError(
            f"the Fréchet distance needs at least 2 vectors per set, got {student.shape[0]} and {teacher.shape[0]}"
        )
    s, t = student.detach().double(), teacher.detach().double()
    cov_s = torch.atleast_2d(torch.cov(s.t()))
    cov_t = torch.atleast_2d(torch.cov(t.t()))
    return compute_frechet_distance(s.mean(0), cov_s, t.mean(0), cov_t).float()


class FrechetSemanticDistance(Cumulative):
    """MONAI-style cumulative metric: ``metric(student_vectors, teacher_vectors)`` per batch, then ``aggregate()``.

    Batches are ``(B, D)``; :meth:`aggregate` returns the distance over every vector seen since :meth:`reset`.
    """

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> None:  # type: ignore[override]
        self.extend(student.detach(), teacher.detach())

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        student, teacher = self.get_buffer()
        return frechet_distance(student, teacher)


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
        semantics: the shared :class:`~lightvessel_monai.gkd.losses.GKDSemantics`.
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
