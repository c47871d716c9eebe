"""Vessel-tree geometry shared by the 2D and 3D synthetic generators."""

from __future__ import annotations

import numpy as np

__all__ = ["murray_children"]


def murray_children(r_parent: float, alpha: float) -> tuple[float, float, float, float]:
    """Child radii with r_p^3 = r_1^3 + r_2^3 and the minimum-work branching angles for that split."""
    r1 = r_parent / (1.0 + alpha**3) ** (1.0 / 3.0)
    r2 = alpha * r1
    p4, a4, b4 = r_parent**4, r1**4, r2**4
    cos1 = (p4 + a4 - b4) / (2.0 * r_parent**2 * r1**2)
    cos2 = (p4 + b4 - a4) / (2.0 * r_parent**2 * r2**2)
    return r1, r2, float(np.arccos(np.clip(cos1, -1.0, 1.0))), float(np.arccos(np.clip(cos2, -1.0, 1.0)))
