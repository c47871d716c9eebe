"""The smooth fill's per-mask plan gives exactly what filtering the whole image gives (``data._smooth_fill``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lightvessel_monai.data import _smooth_fill
from lightvessel_monai.data._smooth_fill import smooth_fill


def whole_image_fill(x: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """The fill as field_of_view computed it before the plan: both Gaussians over the whole image at every width."""
    weight = inside.astype(np.float64)
    filled = np.where(inside, x, 0.0)
    out = np.full(x.shape, x[inside].mean())
    todo = ~inside
    s = float(sigma)
    while todo.any() and s <= 4 * max(x.shape):
        den = ndimage.gaussian_filter(weight, s, mode="nearest")
        num = ndimage.gaussian_filter(filled, s, mode="nearest")
        reached = todo & (den > 1e-3)
        out[reached] = num[reached] / den[reached]
        todo &= ~reached
        s *= 2
    return out


def _masks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, w = 160, 200
    rows, cols = np.ogrid[:h, :w]
    band = np.zeros((h, w), bool)
    band[9:151, 12:190] = True  # a collimator's rectangular field: the outside is a band along the border
    rounded = band & ((rows - 80) ** 2 / 80**2 + (cols - 100) ** 2 / 100**2 <= 1.7)  # cut corners
    disc = (rows - 80) ** 2 + (cols - 100) ** 2 <= 70**2  # XCA's circular field: most of the image to fill
    holes = band.copy()
    holes[60:64, 90:95] = False  # a hole inside the field, away from every border
    one_side = np.ones((h, w), bool)
    one_side[:, : rng.integers(5, 40)] = False
    return {"band": band, "rounded": rounded, "disc": disc, "holes": holes, "one_side": one_side}


@pytest.mark.parametrize("sigma", [3.0, 8.0])
def test_the_planned_fill_equals_the_whole_image_fill_bit_for_bit(sigma):
    rng = np.random.default_rng(0)
    for name, inside in _masks(rng).items():
        for _ in range(2):  # the second image with the same mask uses the cached plan
            x = rng.normal(100, 30, inside.shape)
            np.testing.assert_array_equal(smooth_fill(x, inside, sigma), whole_image_fill(x, inside, sigma), name)


def test_the_band_plan_filters_less_than_the_whole_image():
    inside = _masks(np.random.default_rng(0))["band"]
    (level,) = [lv for lv in _smooth_fill._cached_plan(inside, 8.0).levels if lv.sigma == 8.0]
    area = sum(np.prod([s.stop - s.start for s in box]) for box in level.boxes)
    outside = int((~inside).sum())  # 21 % of the image
    assert len(level.boxes) == 4 and area < 1.3 * outside, "four thin bands about the outside, not the whole image"
    assert all(level.reached[box].any() for box in level.boxes)
    covered = np.zeros_like(inside)
    for box in level.boxes:
        covered[box] = True
    assert not (level.reached & ~covered).any(), "every reached pixel lies in a band"
