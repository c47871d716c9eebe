"""Deterministic synthetic X-ray coronary angiograms with pixel-exact vessel masks.

This is the built-in default dataset: it lets the bundle train, evaluate and be tested without downloading patient
data. Each image is rendered in the attenuation (log) domain, which makes the physics simple to state:

* background anatomy (soft-tissue field, ribs, diaphragm dome, spine, heart shadow) adds smooth attenuation;
* contrast-filled coronary trees add ``mu * chord`` where ``chord = 2 * sqrt(r**2 - d**2)`` is the path length of a
  ray through a cylinder of radius ``r`` at distance ``d`` from its axis (Beer-Lambert), so thick vessels are darker;
* a catheter (uniformly dark tube, not part of the label) runs from an image edge to the ostium of the main tree;
* the transmitted intensity ``exp(-A)`` is blurred by the imaging system, photon-counted (quantum noise with
  Poisson statistics, variance = mean) and log-displayed with a random window, as a fluoroscopy chain would.

Geometry is defined in units of a 512-pixel reference image and scaled by ``size / 512``, so other sizes show the
same anatomy; vessel radii are floored at 1 px so the finest branches stay visible in the mask.

An :class:`AngiogramStyle` (noise, contrast, blur, background, vessel calibre) scales these physical knobs, so one
generator renders several imaging domains for cross-domain tests; preset ``"a"`` (all factors 1) is the default
dataset, preset ``"b"`` a clearly shifted domain.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from lightvessel_monai.data._synthetic_files import derived_seed, write_synthetic_dataset
from lightvessel_monai.data._vessel_tree import murray_children
from lightvessel_monai.errors import ConfigKeyError

__all__ = [
    "STYLE_PRESETS",
    "AngiogramStyle",
    "angiogram_style",
    "generate_angiogram",
    "make_synthetic_angiograms",
    "save_overlay_png",
]

logger = logging.getLogger(__name__)

#: Bump whenever the rendered output for a given seed changes, so stale caches are regenerated.
DATASET_NAME = "SyntheticCoronaryAngiograms"  # the datalist's "name"; also identifies a cache of ours
GENERATOR_VERSION = "1"

_REF_SIZE = 512.0
_DS = 0.5  # centerline sampling step (px); fine enough that the max of disc chords equals the tube chord
_MIN_RADIUS_PX = 1.0
_FRACTION_BAND = (0.03, 0.12)
_FILE_RE = re.compile(r"^angio_\d{4,}\.png$")


@dataclass(frozen=True)
class AngiogramStyle:
    """The imaging domain of a synthetic angiogram, as factors on the physics of style ``"a"`` (1.0 = unchanged).

    Each factor multiplies a quantity drawn per image, so a seed keeps its random draws (its anatomy and noise) and
    all factors 1.0 reproduce ``"a"`` byte for byte. Only ``calibre`` can change the anatomy: it changes the vessel
    fraction, by which a layout is accepted or redrawn.

    Attributes:
        noise: quantum-noise standard deviation (photons per pixel are divided by ``noise**2``).
        contrast: iodine attenuation ``mu`` of the vessels, i.e. vessel-to-background contrast.
        blur: standard deviation of the imaging system's Gaussian blur.
        background: strength of the anatomical structure (soft-tissue fields and texture, ribs, heart shadow,
            spine, diaphragm) around the mean attenuation.
        calibre: vessel radius (still floored at 1 px); the accepted vessel-fraction band scales with it, so trees
            keep the size distribution of ``"a"``.
    """

    noise: float = 1.0
    contrast: float = 1.0
    blur: float = 1.0
    background: float = 1.0
    calibre: float = 1.0


#: Named styles: ``"a"`` is the default dataset, ``"b"`` a shifted domain (noisier, fainter, blurrier, heavier
#: background, thinner vessels) on which a student trained on ``"a"`` alone loses clearly: the bundle's ``none``
#: student after 30 epochs on ``"a"`` scored Dice 0.870 on the validation renders of ``"a"`` and 0.626 on ``"b"``.
STYLE_PRESETS: dict[str, AngiogramStyle] = {
    "a": AngiogramStyle(),
    "b": AngiogramStyle(noise=1.6, contrast=0.8, blur=1.3, background=1.5, calibre=0.8),
}


def angiogram_style(style: str | Mapping[str, float] | AngiogramStyle = "a") -> AngiogramStyle:
    """Resolve ``style`` (a preset name, a mapping of field overrides on top of ``"a"``, or a style) to a style.

    A bad name, field or value is a one-line :class:`ConfigKeyError` naming ``synthetic#style``.
    """
    if isinstance(style, AngiogramStyle):
        return style
    names = [f.name for f in fields(AngiogramStyle)]
    if isinstance(style, str):
        if style not in STYLE_PRESETS:
            raise ConfigKeyError(
                f"synthetic#style: unknown preset {style!r}; choose one of {', '.join(map(repr, STYLE_PRESETS))} "
                f"or a mapping of the fields {', '.join(names)}"
            )
        return STYLE_PRESETS[style]
    if not isinstance(style, Mapping):
        raise ConfigKeyError(
            f"synthetic#style must be a preset name ({', '.join(map(repr, STYLE_PRESETS))}) or a mapping of the "
            f"fields {', '.join(names)}, got {type(style).__name__}"
        )
    unknown = sorted(str(k) for k in style if k not in names)
    if unknown:
        raise ConfigKeyError(f"synthetic#style: unknown field {unknown[0]!r}; valid fields: {', '.join(names)}")
    for key, value in style.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
        if not ok:
            raise ConfigKeyError(f"synthetic#style#{key} must be a positive finite number, got {value!r}")
    return AngiogramStyle(**{k: float(v) for k, v in style.items()})


@dataclass
class _Tube:
    """Densely sampled centerline of one vessel segment (x, y in pixels) with its radius per sample."""

    xy: np.ndarray
    r: np.ndarray


# --------------------------------------------------------------------------------------------------------------------
# Vessel geometry
# --------------------------------------------------------------------------------------------------------------------


def _centerline(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    scale: float,
    bend: float,
    wiggle: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random-walk curve: curvature = low-pass filtered noise + a constant bend (vessels wrap the heart)."""
    n = max(int(length / _DS), 2)
    corr = 40.0 * scale / _DS  # correlation length of the curvature, in samples
    noise = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=corr, mode="reflect")
    noise /= np.sqrt(1.0 / (2.0 * np.sqrt(np.pi) * corr))  # unit variance for a Gaussian-filtered white noise
    kappa = bend + noise * (wiggle / (150.0 * scale))
    theta = heading + np.cumsum(kappa) * _DS
    steps = np.stack([np.cos(theta), np.sin(theta)], axis=1) * _DS
    xy = start[None, :] + np.cumsum(steps, axis=0)
    return xy, theta


def _grow_tree(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    r0_ref: float,
    n_gen: int,
    size: int,
    first_len_ref: float | None = None,
    first_wiggle: float = 1.0,
    calibre: float = 1.0,
) -> list[_Tube]:
    """Grow one arterial tree by recursive asymmetric bifurcations (explicit stack, depth ``n_gen``).

    Radii are tracked in reference (512 px) units so the branching pattern does not depend on ``size``; the drawn
    radius (times ``calibre``) is floored at 1 px. Segments leaving the field of view are cut and do not branch
    further.
    """
    scale = size / _REF_SIZE
    margin = 4.0
    tubes: list[_Tube] = []
    tree_bend = rng.normal(0.0, 1.0 / (400.0 * scale))
    # stack items: (start, heading, nominal radius in ref px, generation, length override in ref px)
    stack: list[tuple[np.ndarray, float, float, int, float | None]] = [(start, heading, r0_ref, 0, first_len_ref)]
    while stack:
        p0, th0, r_ref, gen, len_ref = stack.pop()
        terminal = gen >= n_gen or r_ref < 1.6
        if len_ref is None:
            if terminal:
                len_ref = rng.uniform(45.0, 120.0) * np.sqrt(max(r_ref, 1.0) / 1.5)
            else:
                len_ref = 25.0 + r_ref * rng.uniform(10.0, 22.0)
        wiggle = first_wiggle if gen == 0 and not tubes else 1.0
        bend = (tree_bend + rng.normal(0.0, 1.0 / (600.0 * scale))) * wiggle
        xy, theta = _centerline(rng, p0, th0, len_ref * scale, scale, bend, wiggle)
        outside = (xy < -margin) | (xy > size - 1 + margin)
        exited = bool(outside.any())
        if exited:
            cut = int(np.argmax(outside.any(axis=1)))
            if cut < 2:
                continue
            xy, theta = xy[:cut], theta[:cut]
        # gentle taper along branching segments; end branches thin out towards the capillary bed
        r_end_ref = r_ref * (rng.uniform(0.45, 0.7) if terminal else rng.uniform(0.8, 0.95))
        r = np.maximum(np.linspace(r_ref, r_end_ref, len(xy)) * (scale * calibre), _MIN_RADIUS_PX)
        tubes.append(_Tube(xy=xy, r=r))

        # thin side twigs along larger segments (diagonal/marginal-like small branches)
        if r_ref > 2.2 and len(xy) > 40:
            for _ in range(rng.poisson(len(xy) * _DS / (70.0 * scale))):
                i = int(rng.integers(10, len(xy) - 10))
                side = rng.choice([-1.0, 1.0])
                tw_r = rng.uniform(1.1, max(1.2, 0.45 * r_ref))
                stack.append((xy[i], theta[i] + side * np.deg2rad(rng.uniform(35, 80)), tw_r, n_gen, None))

        if terminal or exited:
            continue
        alpha = rng.uniform(0.75, 1.0) if gen == 0 else rng.uniform(0.35, 0.95)
        r1, r2, a1, a2 = murray_children(r_end_ref, alpha)
        side = rng.choice([-1.0, 1.0])
        jitter = np.deg2rad(rng.normal(0.0, 6.0, size=2))
        if gen == 0:  # left main splits wide (LAD / circumflex)
            a1, a2 = max(a1, np.deg2rad(35)), max(a2, np.deg2rad(50))
        stack.append((xy[-1], theta[-1] + side * a1 + jitter[0], r1, gen + 1, None))
        stack.append((xy[-1], theta[-1] - side * a2 + jitter[1], r2, gen + 1, None))
    return tubes


def _catheter(rng: np.random.Generator, ostium: np.ndarray, heading: float, size: int) -> _Tube:
    """Cubic Bezier tube from an image edge that ends coaxially in the ostium (heading = main vessel direction)."""
    scale = size / _REF_SIZE
    # enter from an edge roughly behind the ostium (as the catheter descends the aorta), so it does not have to
    # double back along the vessel it engages
    normals = np.array([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])  # top, bottom, left, right (outward)
    fwd = np.array([np.cos(heading), np.sin(heading)])
    prob = np.exp(-3.0 * normals @ fwd)
    edge = int(rng.choice(4, p=prob / prob.sum()))
    outside = 12.0 * scale + 4.0
    along = 0 if edge < 2 else 1  # coordinate that varies along the chosen edge
    p0 = np.empty(2)
    p0[along] = np.clip(ostium[along] + rng.uniform(-0.3, 0.3) * size, 0.1 * size, 0.9 * size)
    p0[1 - along] = -outside if edge in (0, 2) else size - 1 + outside
    inward = -normals[edge]
    dist = float(np.linalg.norm(ostium - p0))
    p1 = p0 + inward * dist * rng.uniform(0.3, 0.6)
    p2 = ostium - fwd * rng.uniform(35.0, 80.0) * scale
    ctrl = np.stack([p0, p1, p2, ostium])
    n = int(np.ceil(np.linalg.norm(np.diff(ctrl, axis=0), axis=1).sum() / (0.6 * _DS))) + 2
    t = np.linspace(0.0, 1.0, n)[:, None]
    xy = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * ostium
    r = np.full(n, max(rng.uniform(2.0, 2.6) * scale, _MIN_RADIUS_PX))
    return _Tube(xy=xy, r=r)


# --------------------------------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------------------------------


def _stamp_max(shape: tuple[int, int], tubes: list[_Tube], flat: bool = False) -> np.ndarray:
    """Max over all centerline samples of a per-disc profile, evaluated at pixel centres.

    ``flat=False`` gives the chord ``2 sqrt(r^2 - d^2)`` (cylinder path length): with samples 0.5 px apart the max
    over discs equals the chord through the swept tube. ``flat=True`` gives an anti-aliased uniform disc (catheter).
    Samples are bucketed by radius so each bucket is one vectorised patch computation.
    """
    h, w = shape
    field = np.zeros(h * w, dtype=np.float32)
    if not tubes:
        return field.reshape(shape)
    xy = np.concatenate([t.xy for t in tubes])
    r = np.concatenate([t.r for t in tubes])
    keep = (xy[:, 0] > -r - 1) & (xy[:, 0] < w + r) & (xy[:, 1] > -r - 1) & (xy[:, 1] < h + r)
    xy, r = xy[keep], r[keep]
    half = np.ceil(r + 0.5).astype(np.int64)
    for k in np.unique(half):
        sel = half == k
        px, py, rr = xy[sel, 0], xy[sel, 1], r[sel]
        off = np.arange(-k, k + 1)
        gx = np.rint(px).astype(np.int64)[:, None, None] + off[None, None, :]
        gy = np.rint(py).astype(np.int64)[:, None, None] + off[None, :, None]
        d2 = (gx - px[:, None, None]) ** 2 + (gy - py[:, None, None]) ** 2
        if flat:
            val = np.clip(rr[:, None, None] - np.sqrt(d2) + 0.5, 0.0, 1.0)
        else:
            val = 2.0 * np.sqrt(np.maximum(rr[:, None, None] ** 2 - d2, 0.0))
        ok = (val > 0) & (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h)
        np.maximum.at(field, (gy * w + gx)[ok], val[ok].astype(np.float32))
    return field.reshape(shape)


# --------------------------------------------------------------------------------------------------------------------
# Background anatomy
# --------------------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance low-frequency field: a coarse random grid interpolated with Gaussian weights.

    A sum of ``cells + 2`` outer products replaces a large-sigma Gaussian filter or spline zoom (tens of ms at
    512 px) and, unlike a BLAS matmul, does not depend on thread scheduling.
    """
    coarse = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * cells + 0.5  # pixel centres in cell units (+1 pad)
    weights = np.exp(-0.5 * ((pos[:, None] - (np.arange(cells + 2, dtype=np.float32) + 0.5)[None, :]) / 0.6) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    rows = weights @ coarse  # (size, cells + 2): tiny
    field = np.zeros((size, size), dtype=np.float32)
    for k in range(cells + 2):
        field += rows[:, k, None] * weights[None, :, k]
    return field / (field.std() + 1e-6)


def _rib_profile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """1D attenuation profile across a stack of ribs (sampled on a grid), to be looked up with ``np.interp``."""
    grid = np.linspace(-1.5 * size, 1.5 * size, 6 * size, dtype=np.float32)
    prof = np.zeros_like(grid)
    spacing = rng.uniform(0.15, 0.21) * size
    centre = -1.5 * size + rng.uniform(0, spacing)
    while centre < 1.5 * size:
        width = spacing * rng.uniform(0.4, 0.55)
        d = (grid - centre) / (0.5 * width)
        body = np.sqrt(np.maximum(1.0 - d**2, 0.0))
        prof += rng.uniform(0.7, 1.2) * (0.6 * body + 0.4 * np.sqrt(body))  # sqrt term: brighter cortical rim
        centre += spacing * rng.uniform(0.9, 1.1)
    return grid, prof


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function via tanh (no overflow for large float32 arguments)."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _rotated(size: int, angle: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along, v across) of every pixel in a frame rotated by ``angle`` around (cx, cy)."""
    x = np.arange(size, dtype=np.float32)[None, :] - np.float32(cx)
    y = np.arange(size, dtype=np.float32)[:, None] - np.float32(cy)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return x * c + y * s, y * c - x * s


def _background(rng: np.random.Generator, size: int, heart_centre: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Attenuation of the thorax: soft-tissue field, heart shadow, ribs, spine and diaphragm dome.

    ``strength`` multiplies every structure's drawn amplitude (not the mean level). Everything stays float32
    (numpy scalars are cast to Python floats so they do not upcast the arrays).
    """
    scale = size / _REF_SIZE
    half = size / 2.0
    att = np.full((size, size), rng.uniform(0.35, 0.6), dtype=np.float32)
    att += strength * rng.uniform(0.06, 0.1) * _smooth_noise(rng, size, 5)
    att += strength * rng.uniform(0.015, 0.03) * _smooth_noise(rng, size, 14)
    # fine mottled texture (lung parenchyma / soft tissue); 0.28/sigma ~ std of Gaussian-filtered unit noise
    sig = 2.0 * scale + 0.5
    fine = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma=sig)
    att += (strength * rng.uniform(0.006, 0.012) * sig / 0.28) * fine

    # ribs: curved bands (parabolas in a rotated frame); one interp instead of one full-image pass per rib
    u, v = _rotated(size, float(np.deg2rad(rng.uniform(-35, 35))), half, half)
    curv = rng.uniform(0.4, 1.3) / size * float(rng.choice([-1.0, 1.0]))
    grid, prof = _rib_profile(rng, size)
    ribs = np.interp(v - curv * u**2, grid, prof).astype(np.float32)
    fade = np.clip(0.65 + 0.35 * _smooth_noise(rng, size, 3), 0.2, 1.0)  # ribs fade in and out of the view
    att += strength * rng.uniform(0.05, 0.09) * ribs * fade

    # heart shadow: soft ellipse around the coronary tree
    u, v = _rotated(size, rng.uniform(0, np.pi), float(heart_centre[0]), float(heart_centre[1]))
    ax, ay = rng.uniform(0.3, 0.45) * size, rng.uniform(0.25, 0.38) * size
    rho = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    att += strength * rng.uniform(0.12, 0.25) * _sigmoid((1.0 - rho) / 0.12)

    # spine: near-vertical band with vertebral-body periodicity
    if rng.random() < 0.7:
        along, across = _rotated(size, float(np.deg2rad(90 + rng.uniform(-8, 8))), rng.uniform(0.25, 0.75) * size, half)
        half_w = rng.uniform(0.07, 0.1) * size
        band = _sigmoid((half_w - np.abs(across)) / (0.012 * size))
        period = rng.uniform(0.09, 0.12) * size
        att += strength * rng.uniform(0.12, 0.22) * band * (1.0 + 0.18 * np.cos((2 * np.pi / period) * along))

    # diaphragm dome: dense (liver) region below a smooth parabola
    if rng.random() < 0.85:
        u, v = _rotated(size, float(np.deg2rad(rng.uniform(-25, 25))), half, half)
        xc = rng.uniform(-0.3, 0.3) * size
        top = rng.uniform(0.15, 0.4) * size
        dome = top + rng.uniform(0.6, 1.6) / size * (u - xc) ** 2
        att += strength * rng.uniform(0.25, 0.45) * _sigmoid((v - dome) / (0.015 * size))
    return att


# --------------------------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------------------------


def _layout(rng: np.random.Generator, size: int, calibre: float = 1.0) -> tuple[list[list[_Tube]], _Tube, np.ndarray]:
    """Place the main (catheterised) tree, a second crossing tree and the catheter (vessel radii times ``calibre``)."""
    scale = size / _REF_SIZE
    ostium = np.array([rng.uniform(0.25, 0.6), rng.uniform(0.12, 0.35)]) * size
    if rng.random() < 0.5:  # mirror the view so vessels run to either side
        ostium[0] = size - 1 - ostium[0]
    to_centre = np.array([0.5, 0.7]) * size - ostium
    heading = float(np.arctan2(to_centre[1], to_centre[0]) + rng.normal(0.0, 0.3))
    main = _grow_tree(
        rng,
        ostium,
        heading,
        rng.uniform(5.5, 7.5),
        int(rng.integers(3, 6)),
        size,
        first_len_ref=rng.uniform(18.0, 45.0),
        calibre=calibre,
    )
    # second tree enters from an edge aimed at a point on the main tree, so vessels cross
    pts = np.concatenate([t.xy for t in main])
    target = pts[rng.integers(len(pts))]
    edge_ang = rng.uniform(0, 2 * np.pi)
    entry = np.clip(size / 2 + 0.75 * size * np.array([np.cos(edge_ang), np.sin(edge_ang)]), 0, size - 1)
    aim = float(np.arctan2(target[1] - entry[1], target[0] - entry[0]) + rng.normal(0.0, 0.15))
    second = _grow_tree(
        rng,
        entry,
        aim,
        rng.uniform(2.6, 4.0),
        int(rng.integers(2, 4)),
        size,
        first_len_ref=float(np.linalg.norm(target - entry)) / scale * rng.uniform(1.1, 1.4),
        first_wiggle=0.4,  # keep the first segment on course so it crosses the main tree
        calibre=calibre,
    )
    cath = _catheter(rng, ostium, heading, size)
    return [main, second], cath, pts.mean(axis=0)


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def generate_angiogram(
    seed: int, size: int = 512, style: str | Mapping[str, float] | AngiogramStyle = "a"
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic coronary angiogram.

    Args:
        seed: seed of ``numpy.random.default_rng``; the output depends on nothing else (no global RNG state).
        size: image height and width in pixels; geometry scales with ``size / 512``.
        style: imaging domain, see :func:`angiogram_style` (a preset name or field overrides on top of ``"a"``).

    Returns:
        ``(image, mask)``: ``uint8`` arrays of shape ``(size, size)``; vessels are dark in ``image`` and 255 in
        ``mask`` (0 elsewhere). The catheter is visible in the image but not labelled.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    look = angiogram_style(style)
    rng = np.random.default_rng(seed)
    scale = size / _REF_SIZE
    shape = (size, size)

    # Redraw the layout (deterministically, from the same stream) until the vessel fraction is plausible and the
    # two trees cross; keep the best attempt (fraction first) if none qualifies.
    best = None
    lo, hi = (bound * look.calibre for bound in _FRACTION_BAND)
    for _ in range(8):
        trees, cath, centre = _layout(rng, size, look.calibre)
        chords = [_stamp_max(shape, tree) for tree in trees]
        inside = [c > 0 for c in chords]
        mask = np.logical_or.reduce(inside)
        frac = float(mask.mean())
        score = (max(lo - frac, frac - hi, 0.0), not bool((inside[0] & inside[1]).any()))
        if best is None or score < best[0]:
            best = (score, chords, mask, cath, centre)
        if score == (0.0, False):
            break
    assert best is not None
    _, chords, mask, cath, centre = best

    # Beer-Lambert: attenuation = mu * path length; trees add (crossings look darker), within a tree the max is
    # used so overlapping junction discs are not counted twice. mu is per px, hence the 1/scale.
    mu = rng.uniform(0.07, 0.1) / scale * look.contrast
    att = _background(rng, size, centre, look.background)
    att += mu * np.sum(chords, axis=0)
    att += rng.uniform(0.6, 0.85) * _stamp_max(shape, [cath], flat=True)

    # imaging chain: vignetting, system blur (focal spot + detector), quantum noise, light noise correlation
    r = (np.arange(size, dtype=np.float32) - np.float32(size / 2.0)) / np.float32(size / 2.0)
    vignette = 1.0 - rng.uniform(0.05, 0.2) * (r[:, None] ** 2 + r[None, :] ** 2)  # image-intensifier fall-off
    transmitted = np.exp(-att) * vignette
    transmitted = ndimage.gaussian_filter(transmitted, sigma=rng.uniform(0.7, 1.2) * max(scale, 0.5) * look.blur)
    photons = rng.uniform(600.0, 1500.0) / scale**2 / look.noise**2  # larger pixels collect more photons
    # Poisson counts in their Gaussian limit (variance = mean; fine for the >= ~20 photons per pixel here),
    # several times faster than rng.poisson at 512 px
    lam = transmitted * np.float32(photons)
    counts = lam + np.sqrt(lam) * rng.standard_normal((size, size), dtype=np.float32)
    counts = ndimage.gaussian_filter(counts, sigma=0.5)
    log_img = -np.log(np.maximum(counts, 1.0) / np.float32(photons))

    # display: log image windowed around the background level (vessels dark, background mid-grey)
    level = float(np.median(log_img))
    gain = rng.uniform(130.0, 170.0)
    image = rng.uniform(135.0, 175.0) + (level - log_img) * gain
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, (mask.astype(np.uint8) * 255)


def save_overlay_png(image: np.ndarray, mask: np.ndarray, path: str | os.PathLike, side_by_side: bool = False) -> str:
    """Write ``image`` with ``mask`` overlaid (translucent red fill, opaque red contour) as an RGB PNG.

    With ``side_by_side=True`` the plain image is placed to the left of the overlay. Returns the written path.
    """
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    fg = np.asarray(mask) > 0
    rgb = np.repeat(img[..., None], 3, axis=2)
    red = np.array([255.0, 30.0, 30.0], dtype=np.float32)
    rgb[fg] = 0.65 * rgb[fg] + 0.35 * red
    contour = fg & ~ndimage.binary_erosion(fg)
    rgb[contour] = red
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if side_by_side:
        gap = np.full((img.shape[0], max(4, img.shape[1] // 64), 3), 255, dtype=np.uint8)
        out = np.concatenate([np.repeat(np.asarray(image, np.uint8)[..., None], 3, axis=2), gap, out], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(path, optimize=True)
    return str(path)


def _style_name(look: AngiogramStyle) -> str:
    """The preset's name, else the fields that differ from ``"a"`` (for log messages)."""
    for name, preset in STYLE_PRESETS.items():
        if look == preset:
            return repr(name)
    default = STYLE_PRESETS["a"]
    return ", ".join(f"{k}={v:g}" for k, v in asdict(look).items() if v != getattr(default, k))


def make_synthetic_angiograms(
    output_dir: str | os.PathLike,
    num_train: int = 40,
    num_val: int = 10,
    size: int = 512,
    seed: int = 0,
    style: str | Mapping[str, float] | AngiogramStyle = "a",
) -> str:
    """Write a synthetic angiogram dataset (PNG images and 0/255 labels) and its MSD-style datalist.

    Files are ``imagesTr/angio_XXXX.png`` / ``labelsTr/angio_XXXX.png``; the first ``num_train`` indices form the
    ``"training"`` list and the next ``num_val`` the ``"validation"`` list. Image ``i`` is rendered from a seed
    derived from ``(seed, i)`` in ``style`` (see :func:`angiogram_style`). If ``dataset.json`` already exists with
    the same generator parameters (style included) and all its files are present, nothing is regenerated; a folder
    generated in another style is regenerated. The datalist is written last and atomically, so an interrupted run
    is never mistaken for a complete cache.

    Returns:
        path of ``dataset.json`` in ``output_dir``.
    """
    from PIL import Image

    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    look = angiogram_style(style)
    generator = {
        "seed": int(seed),
        "size": int(size),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "version": GENERATOR_VERSION,
    }
    # The cache is keyed on the style's values (a preset and the same mapping share a cache). Style "a" adds no key,
    # so the caches written before styles existed, which hold the same bytes, stay valid.
    if look != STYLE_PRESETS["a"]:
        generator["style"] = asdict(look)
    info = {
        "name": DATASET_NAME,
        "description": "Procedurally generated 2D X-ray coronary angiograms with binary vessel masks "
        "(lightvessel_monai.data.synthetic_2d).",
        "modality": {"0": "XA"},
        "labels": {"0": "background", "1": "vessel"},
        "label_values": {"background": 0, "vessel": 255},
    }

    def write_pair(i: int, image_path: Path, label_path: Path) -> None:
        image, mask = generate_angiogram(derived_seed(seed, i), size=size, style=look)
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(label_path)

    names = [f"angio_{i:04d}.png" for i in range(num_train + num_val)]
    what = f"synthetic angiograms ({size}x{size}, seed {seed}, style {_style_name(look)})"
    return write_synthetic_dataset(output_dir, generator, names, _FILE_RE, info, write_pair, what, logger)


def main(argv: list[str] | None = None) -> str:
    """CLI entry point: generate (or reuse) the dataset and print the datalist path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train", type=int, default=40)
    parser.add_argument("--num_val", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--style",
        default="a",
        help=f"a preset ({', '.join(STYLE_PRESETS)}) or a JSON object of style fields, e.g. '{{\"noise\": 2}}'",
    )
    parser.add_argument("--overlay", default=None, help="also write image|overlay of validation image 0 to this PNG")
    args = parser.parse_args(argv)
    if args.overlay and args.num_train + args.num_val == 0:
        parser.error("--overlay needs at least one image")
    try:
        style = angiogram_style(json.loads(args.style) if args.style.lstrip().startswith("{") else args.style)
    except (ValueError, ConfigKeyError) as err:  # a JSON syntax error is a ValueError too
        parser.error(f"--style: {err}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = make_synthetic_angiograms(args.output_dir, args.num_train, args.num_val, args.size, args.seed, style)
    if args.overlay:
        from PIL import Image

        data = json.loads(Path(path).read_text())
        item = (data["validation"] or data["training"])[0]
        root = Path(path).parent
        image = np.asarray(Image.open(root / item["image"]))
        mask = np.asarray(Image.open(root / item["label"]))
        save_overlay_png(image, mask, args.overlay, side_by_side=True)
    print(path)
    return path


if __name__ == "__main__":
    main()
