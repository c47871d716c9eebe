"""The ``"smooth"`` fill of :mod:`lightvessel_monai.data.field_of_view`, planned once per mask.

The fill is a normalised convolution, ``G_s * (x m) / G_s * m`` at the pixels outside the field ``m``, with ``s``
doubled until every outside pixel is reached. Everything but the numerator ``G_s * (x m)`` depends on the mask alone:
the denominators, which pixels each ``s`` reaches, and where the numerator is needed. A cine run fills every frame
with one mask, and XCA's preprocessing fills each frame twice, so :func:`smooth_fill` keeps that plan for the last
few masks and computes per image only the numerator, and in 2D only on the bands along the image border that hold
the pixels to fill (a collimator's surround is such a band).

The result is bit for bit that of filtering the whole image: ``scipy.ndimage.gaussian_filter`` filters along one axis,
then the other, each output a fixed sum over ``radius`` inputs on either side, so a crop that extends ``radius``
pixels beyond the pixels it must give (or reaches the image border, where both see the same ``"nearest"``
extension) gives them exactly (tested against the whole-image filter).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["smooth_fill"]

_TRUNCATE = 4.0  # gaussian_filter's default: the kernel reaches int(4 s + 0.5) pixels
_MIN_WEIGHT = 1e-3  # a pixel is reached when 0.1 % of the Gaussian's mass lies on field pixels
_MAX_PLANS = 8  # masks remembered (a plan holds a few bool images; one cine run or XCA frame uses one)

Box = tuple[slice, ...]


@dataclass(frozen=True)
class _Level:
    sigma: float
    reached: np.ndarray  # bool, the pixels this sigma fills
    denominator: np.ndarray  # G_s * m at those pixels
    boxes: list[Box]  # where the numerator must be computed; together they hold every reached pixel


@dataclass(frozen=True)
class _Plan:
    levels: list[_Level]


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()


def _radius(sigma: float) -> int:
    return int(_TRUNCATE * float(sigma) + 0.5)


def _border_boxes(reached: np.ndarray, radius: int) -> list[Box]:
    """Boxes along the border of a 2D image that hold every ``reached`` pixel: each pixel goes to the band of its
    nearest image edge; a band's box is as deep as its deepest pixel and as long as its pixels reach along the edge.
    The whole image when the boxes, widened by the filter's ``radius``, would not be smaller."""
    whole = [tuple(slice(0, n) for n in reached.shape)]
    if reached.ndim != 2:  # volumes: the whole array
        return whole
    h, w = reached.shape
    rows, cols = np.nonzero(reached)
    distances = np.stack([rows, h - 1 - rows, cols, w - 1 - cols])  # to the top, bottom, left and right edge
    side = distances.argmin(axis=0)
    boxes: list[Box] = []
    for k in range(4):
        mine = side == k
        if not mine.any():
            continue
        depth = int(distances[k][mine].max()) + 1
        along = cols[mine] if k < 2 else rows[mine]
        span = slice(int(along.min()), int(along.max()) + 1)
        across = slice(0, depth) if k in (0, 2) else slice((h if k == 1 else w) - depth, h if k == 1 else w)
        boxes.append((across, span) if k < 2 else (span, across))
    area = sum(
        np.prod([min(n, s.stop + radius) - max(0, s.start - radius) for s, n in zip(b, (h, w), strict=True)])
        for b in boxes
    )
    return boxes if area < h * w else whole


def _gaussian_on(image: np.ndarray, sigma: float, boxes: list[Box]) -> np.ndarray:
    """``gaussian_filter(image, sigma, mode="nearest")``, exact on ``boxes`` (elsewhere unset)."""
    if len(boxes) == 1 and all(s.start == 0 and s.stop == n for s, n in zip(boxes[0], image.shape, strict=True)):
        return ndimage.gaussian_filter(image, sigma, mode="nearest")
    out = np.empty_like(image)
    r = _radius(sigma)
    for box in boxes:
        crop = tuple(slice(max(0, s.start - r), min(n, s.stop + r)) for s, n in zip(box, image.shape, strict=True))
        part = ndimage.gaussian_filter(image[crop], sigma, mode="nearest")
        inner = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(box, crop, strict=True))
        out[box] = part[inner]
    return out


def _plan(inside: np.ndarray, sigma: float) -> _Plan:
    weight = inside.astype(np.float64)
    todo = ~inside
    levels = []
    s = float(sigma)
    while todo.any() and s <= 4 * max(inside.shape):
        den = ndimage.gaussian_filter(weight, s, mode="nearest")
        reached = todo & (den > _MIN_WEIGHT)
        if reached.any():
            levels.append(_Level(s, reached, den[reached], _border_boxes(reached, _radius(s))))
        todo &= ~reached
        s *= 2
    return _Plan(levels)


def _cached_plan(inside: np.ndarray, sigma: float) -> _Plan:
    key = (inside.shape, float(sigma), hashlib.blake2b(np.packbits(inside).tobytes(), digest_size=16).digest())
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(inside, sigma)
        if len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    return plan


def smooth_fill(x: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution of ``x`` (float64) from the ``inside`` pixels (bool, ``x``'s shape), widened until it
    reaches every pixel; pixels that no width reaches take the field's mean. Returns float64, ``x``'s shape."""
    filled = np.where(inside, x, 0.0)
    out = np.full(x.shape, x[inside].mean())
    for level in _cached_plan(inside, sigma).levels:
        num = _gaussian_on(filled, level.sigma, level.boxes)
        out[level.reached] = num[level.reached] / level.denominator
    return out
