"""The Fréchet Semantic Distance of GKD (Qi et al., IEEE JBHI 2024): how far the student's semantic vectors lie from
the teacher's, read as FID is read.

.. math::
    d^2 = \\|\\mu_t - \\mu_s\\|^2 + \\mathrm{Tr}\\big(\\Sigma_t + \\Sigma_s - 2 (\\Sigma_t \\Sigma_s)^{1/2}\\big)

over the two sets of semantic vectors ``(N, D)`` (:class:`~lightvessel_monai.losses.gkd.GKDSemantics`), with the
unbiased sample covariances. MONAI's ``compute_frechet_distance`` (of its FID metric) does the matrix square root.
"""

from __future__ import annotations

import torch
from monai.metrics import Cumulative
from monai.metrics.fid import compute_frechet_distance

__all__ = ["FrechetSemanticDistance", "frechet_distance"]


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
