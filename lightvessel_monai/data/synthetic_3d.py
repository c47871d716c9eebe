"""Deterministic synthetic contrast-enhanced abdominal CT volumes (Hounsfield units) with liver-vessel masks.

This is the built-in default 3D dataset. Each volume is a portal-venous-phase-like scene:

* air (-1000 HU) around an elliptical-cylinder body of soft tissue (~0-60 HU) with a subcutaneous fat rim and
  visceral fat patches (~-100 HU);
* a vertebral body (cancellous ~450 HU, cortical rim ~700 HU, intervertebral discs), the contrast-filled aorta and
  two kidneys, which are bright but not labelled (distractors);
* a liver (~40-70 HU): an ellipsoid deformed by low-frequency noise, on the patient's right;
* inside it a branching, tapering portal vessel tree (~150-250 HU) grown from the hilum: smooth 3D random-walk
  centerlines steered to stay in the liver, bifurcations with Murray's-law radii (r_p^3 = r_1^3 + r_2^3) and
  minimum-work angles over 3-4 generations, plus thin side twigs; radii are floored at one in-plane voxel.
  The label is this tree (1), everything else 0.
* partial-volume blur (anisotropic Gaussian PSF, wider along the slice axis in mm) and Gaussian noise (10-20 HU).

Geometry is defined in millimetres of the array's index frame ``(i * s_i, j * s_j, k * s_k)`` as fractions of the
field of view, so other shapes and spacings show the same anatomy. ``k`` is the (thick) slice axis. A tube is
rasterised as the voxels whose central ``2/3`` of the slice thickness it intersects, so thin vessels that run
between slice centres stay connected in the mask.

Files are written with an LPS-like, slightly oblique affine (see :func:`ct_affine`):
``nibabel.aff2axcodes(affine) == ("L", "P", "S")``: array axis ``i`` runs to the patient's left, ``j`` to posterior,
``k`` to superior (the liver, on the patient's right, lies at low ``i``; the spine at high ``j``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lightvessel_monai.data._synthetic_files import derived_seed, write_synthetic_dataset
from lightvessel_monai.data._vessel_tree import murray_children

__all__ = ["ct_affine", "generate_ct_volume", "make_synthetic_ct"]

logger = logging.getLogger(__name__)

#: Bump whenever the rendered output for a given seed changes, so stale caches are regenerated.
DATASET_NAME = "SyntheticLiverVesselCT"  # the datalist's "name"; also identifies a cache of ours
GENERATOR_VERSION = "1"

DEFAULT_SHAPE = (96, 96, 48)
DEFAULT_SPACING = (0.8, 0.8, 2.5)
#: in-plane rotation of the written affine (degrees about the superior axis): a mildly oblique acquisition
AFFINE_ROTATION_DEG = 3.0
#: world (RAS, mm) position of the volume centre in the written affine
AFFINE_CENTRE_RAS = (-20.0, 15.0, -120.0)

_REF_FOV = 76.8  # in-plane field of view (mm) the geometry was tuned for (96 voxels of 0.8 mm)
_STEP = 1.0  # centerline integration step (mm)
_DS = 0.25  # centerline sampling step for rasterisation (mm)
_PSF_SIGMA_MM = (0.5, 0.5, 1.0)  # Gaussian system blur; the slice sensitivity profile is wider than the in-plane PSF
_FRACTION_BAND = (0.0025, 0.03)  # accepted vessel fraction of the volume
_FILE_RE = re.compile(r"^ct_\d{4,}\.nii\.gz$")


# --------------------------------------------------------------------------------------------------------------------
# Smooth 3D noise
# --------------------------------------------------------------------------------------------------------------------


def _axis_weights(pos: np.ndarray, extent: float, cells: int) -> np.ndarray:
    """Normalised Gaussian interpolation weights (len(pos), cells + 2) of positions on a coarse grid of ``cells``."""
    u = np.asarray(pos, dtype=np.float64) / extent * cells + 0.5  # position in cell units (+1 pad)
    w = np.exp(-0.5 * ((u[:, None] - (np.arange(cells + 2) + 0.5)[None, :]) / 0.6) ** 2)
    return w / w.sum(axis=1, keepdims=True)


@dataclass
class _Noise3D:
    """Low-frequency random field: a coarse random grid interpolated with separable Gaussian weights.

    It can be evaluated on the voxel grid (``grid``) and at arbitrary points (``at``) with the same formula, which
    lets the centerline integrator test "inside the liver" without a grid lookup.
    """

    coarse: np.ndarray  # (c0 + 2, c1 + 2, c2 + 2)
    extent: tuple[float, float, float]  # mm
    cells: tuple[int, int, int]
    norm: float = 1.0

    @classmethod
    def make(cls, rng: np.random.Generator, extent, cells, shape, spacing) -> tuple[_Noise3D, np.ndarray]:
        """New field normalised to unit standard deviation over the voxel grid; returns it and its grid values."""
        coarse = rng.standard_normal(tuple(c + 2 for c in cells))
        field = cls(coarse, tuple(float(e) for e in extent), tuple(cells))
        grid = field.grid(shape, spacing)
        field.norm = float(grid.std()) + 1e-6
        return field, grid / np.float32(field.norm)

    def grid(self, shape, spacing) -> np.ndarray:
        """Field at all voxel centres, float32. Small contractions first; no BLAS (thread-count independent)."""
        w = [
            _axis_weights(np.arange(n) * s, e, c)
            for n, s, e, c in zip(shape, spacing, self.extent, self.cells, strict=True)
        ]
        t = (self.coarse[:, :, None, :] * w[2][None, None, :, :]).sum(-1)  # (a, b, k)
        t = (t[:, None, :, :] * w[1][None, :, :, None]).sum(2)  # (a, j, k)
        out = np.zeros(tuple(shape), dtype=np.float32)
        for a in range(t.shape[0]):
            out += w[0][:, a, None, None].astype(np.float32) * t[a][None].astype(np.float32)
        return out / np.float32(self.norm)

    def at(self, pts: np.ndarray) -> np.ndarray:
        """Field at points (n, 3) in mm."""
        pts = np.atleast_2d(pts)
        w = [_axis_weights(pts[:, d], self.extent[d], self.cells[d]) for d in range(3)]
        return np.einsum("na,nb,nc,abc->n", w[0], w[1], w[2], self.coarse) / self.norm


# --------------------------------------------------------------------------------------------------------------------
# Liver and vessel tree
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Liver:
    centre: np.ndarray  # mm, index frame
    axes: np.ndarray  # semi-axes, mm
    noise: _Noise3D
    amp: float
    bound: tuple[float, float, float, float]  # in-plane ellipse (cx, cy, ax, ay) the liver is clipped to (body wall)

    def rho(self, pts: np.ndarray) -> np.ndarray:
        """Implicit shape: < 1 inside. Ellipsoid radius plus a smooth deformation, clipped by the body wall."""
        pts = np.atleast_2d(pts)
        rho = np.linalg.norm((pts - self.centre) / self.axes, axis=1) + self.amp * self.noise.at(pts)
        cx, cy, ax, ay = self.bound
        wall = np.sqrt(((pts[:, 0] - cx) / ax) ** 2 + ((pts[:, 1] - cy) / ay) ** 2)
        return np.maximum(rho, wall)

    def inward(self, p: np.ndarray) -> np.ndarray:
        """Unit vector pointing into the (undeformed) ellipsoid from ``p``."""
        g = -(p - self.centre) / self.axes**2
        return g / (np.linalg.norm(g) + 1e-9)


@dataclass
class _Tube:
    """Densely sampled centerline of one vessel segment (mm, index frame) with its radius per sample."""

    pts: np.ndarray
    r: np.ndarray


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _centerline(
    rng: np.random.Generator, liver: _Liver, start: np.ndarray, direction: np.ndarray, length: float, scale: float
) -> np.ndarray:
    """Smooth 3D random walk from ``start`` (unit steps of ``_STEP`` mm), pulled back from the liver surface.

    Stops after ``length`` mm or where the point would leave the shrunk liver (``rho > 0.9``). Returns (n, 3).
    """
    n = max(int(length / _STEP), 2)
    corr = 8.0 * scale / _STEP  # correlation length of the curvature, in steps
    noise = ndimage.gaussian_filter1d(rng.standard_normal((n, 3)), sigma=corr, axis=0, mode="reflect")
    noise *= np.sqrt(2.0 * np.sqrt(np.pi) * corr)  # unit variance
    kappa = 1.0 / (25.0 * scale)  # typical curvature (1/mm)
    pts = [start]
    d = _unit(direction)
    p = start
    for t in range(n):
        q = p + d * _STEP
        rho = float(liver.rho(q)[0])
        if rho > 0.9:
            break
        p = q
        pts.append(p)
        pull = max(rho - 0.6, 0.0) / 0.3
        d = _unit(d + _STEP * kappa * noise[t] + 0.5 * pull * liver.inward(p))
    return np.asarray(pts)


def _resample(pts: np.ndarray, r0: float, r1: float, r_min: float) -> _Tube:
    """Linear resampling of a polyline every ``_DS`` mm with a linearly tapering radius (floored at ``r_min``)."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / _DS)) + 1, 2)
    t = np.linspace(0.0, s[-1], n)
    dense = np.stack([np.interp(t, s, pts[:, d]) for d in range(3)], axis=1)
    r = np.maximum(np.linspace(r0, r1, n), r_min)
    return _Tube(pts=dense, r=r)


def _grow_tree(rng: np.random.Generator, liver: _Liver, scale: float, r_min: float) -> list[_Tube]:
    """Portal tree from the hilum: recursive bifurcations (explicit stack) over ``n_gen`` generations plus twigs."""
    size = float(np.mean(liver.axes))
    n_gen = int(rng.integers(3, 5))
    # hilum: inferior-medial-anterior aspect of the liver (medial = towards +i, the patient's left)
    hilum = liver.centre + liver.axes * np.array([0.45, -0.25, -0.45]) + rng.normal(0.0, 0.05, 3) * liver.axes
    heading = _unit(liver.centre + rng.normal(0.0, 0.25, 3) * liver.axes - hilum)
    heading = _unit(heading + np.array([-0.6, 0.0, 0.3]))  # run laterally (right) and up into the liver
    r0 = rng.uniform(2.8, 3.6) * scale
    tubes: list[_Tube] = []
    stack: list[tuple[np.ndarray, np.ndarray, float, int]] = [(hilum, heading, r0, 0)]
    while stack:
        p0, d0, r, gen = stack.pop()
        terminal = gen >= n_gen or r < 1.15 * r_min
        if gen == 0:
            length = size * rng.uniform(0.3, 0.45)
        elif terminal:
            length = size * rng.uniform(0.5, 1.0)
        else:
            length = size * rng.uniform(0.25, 0.45) * 0.85**gen
        pts = _centerline(rng, liver, p0, d0, length, scale)
        if len(pts) < 3:
            continue
        r_end = r * (rng.uniform(0.5, 0.75) if terminal else rng.uniform(0.85, 0.95))
        tube = _resample(pts, r, r_end, r_min)
        tubes.append(tube)

        # thin side twigs along larger segments
        if r > 1.8 * r_min and len(pts) > 8:
            for _ in range(rng.poisson(len(pts) * _STEP / (0.15 * size))):
                i = int(rng.integers(2, len(pts) - 2))
                d = _unit(pts[i + 1] - pts[i - 1])
                side = _unit(np.cross(d, rng.standard_normal(3)))
                ang = np.deg2rad(rng.uniform(50, 85))
                twig_r = rng.uniform(1.0, 1.6) * r_min
                stack.append((pts[i], np.cos(ang) * d + np.sin(ang) * side, twig_r, n_gen))

        if terminal:
            continue
        alpha = rng.uniform(0.6, 1.0)
        r1, r2, a1, a2 = murray_children(r_end, alpha)
        d_end = _unit(pts[-1] - pts[-3])
        e = _unit(np.cross(d_end, rng.standard_normal(3)))  # random branching plane around the parent axis
        for rc, ang, sgn in ((r1, a1, 1.0), (r2, a2, -1.0)):
            ang = max(ang, np.deg2rad(25.0)) + np.deg2rad(rng.normal(0.0, 5.0))
            dc = np.cos(ang) * d_end + sgn * np.sin(ang) * e
            stack.append((pts[-1], _unit(dc + 0.3 * liver.inward(pts[-1])), rc, gen + 1))
    return tubes


def _stamp(shape, spacing, tubes: list[_Tube]) -> np.ndarray:
    """Voxels within ``r`` of any centerline sample, the slice axis counted as a slab of +-1/3 slice thickness.

    A voxel ``(i, j, k)`` is set when ``dx^2 + dy^2 + max(|dz| - h, 0)^2 <= r^2`` for some sample, with ``h`` a third
    of the slice spacing: the tube crosses the central 2/3 of the voxel's slice (partial-volume majority), which
    keeps radius-1-voxel vessels that run between slice centres connected. Samples are bucketed by patch size.
    """
    n0, n1, n2 = shape
    s = np.asarray(spacing, dtype=np.float64)
    h = s[2] / 3.0
    flat = np.zeros(n0 * n1 * n2, dtype=bool)
    if not tubes:
        return flat.reshape(shape)
    pts = np.concatenate([t.pts for t in tubes])
    r = np.concatenate([t.r for t in tubes])
    half = np.stack([np.ceil(r / s[0]), np.ceil(r / s[1]), np.ceil((r + h) / s[2])], axis=1).astype(np.int64)
    keys, inv = np.unique(half, axis=0, return_inverse=True)
    centre = np.rint(pts / s).astype(np.int64)
    for g, (k0, k1, k2) in enumerate(keys):
        sel = inv.ravel() == g
        p, rr, c = pts[sel], r[sel], centre[sel]
        gi = c[:, 0, None, None, None] + np.arange(-k0, k0 + 1)[None, :, None, None]
        gj = c[:, 1, None, None, None] + np.arange(-k1, k1 + 1)[None, None, :, None]
        gk = c[:, 2, None, None, None] + np.arange(-k2, k2 + 1)[None, None, None, :]
        dz = np.maximum(np.abs(gk * s[2] - p[:, 2, None, None, None]) - h, 0.0)
        d2 = (gi * s[0] - p[:, 0, None, None, None]) ** 2 + (gj * s[1] - p[:, 1, None, None, None]) ** 2 + dz**2
        ok = (d2 <= rr[:, None, None, None] ** 2) & (gi >= 0) & (gi < n0) & (gj >= 0) & (gj < n1)
        ok &= (gk >= 0) & (gk < n2)
        flat[((gi * n1 + gj) * n2 + gk)[ok]] = True
    return flat.reshape(shape)


# --------------------------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------------------------


def _phantom(seed: int, shape, spacing) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Render one volume; returns ``(image_hu, vessel_mask, parts)`` with boolean masks of the structures."""
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    fov = np.array(shape, dtype=np.float64) * np.array(spacing)
    scale = min(fov[0], fov[1]) / _REF_FOV
    r_min = max(spacing[0], spacing[1])  # finest vessels: one in-plane voxel

    f32 = np.float32
    x = (np.arange(shape[0], dtype=f32) * f32(spacing[0]))[:, None, None]
    y = (np.arange(shape[1], dtype=f32) * f32(spacing[1]))[None, :, None]
    z = (np.arange(shape[2], dtype=f32) * f32(spacing[2]))[None, None, :]

    # body: elliptical cylinder along k, wider left-right than antero-posterior
    cx, cy = fov[0] * rng.uniform(0.48, 0.52), fov[1] * rng.uniform(0.48, 0.52)
    ax, ay = fov[0] * rng.uniform(0.44, 0.47), fov[1] * rng.uniform(0.35, 0.39)
    rho_b = np.sqrt(((x - f32(cx)) / f32(ax)) ** 2 + ((y - f32(cy)) / f32(ay)) ** 2)  # (n0, n1, 1)
    body = np.broadcast_to(rho_b < 1.0, shape)
    rim = 1.0 - rng.uniform(4.0, 7.0) * scale / min(ax, ay)  # subcutaneous fat thickness 4-7 mm
    _, soft_noise = _Noise3D.make(rng, fov, (5, 5, 3), shape, spacing)
    img = np.full(shape, -1000.0, dtype=f32)
    tissue = f32(rng.uniform(25.0, 40.0)) + f32(10.0) * soft_noise
    _, fat_noise = _Noise3D.make(rng, fov, (9, 9, 5), shape, spacing)
    fat = (rho_b > rim) | (fat_noise > 1.3)
    tissue = np.where(fat, f32(rng.uniform(-110.0, -90.0)) + f32(5.0) * soft_noise, tissue)
    img[body] = tissue[body]

    # kidneys (enhancing parenchyma), posterior on both sides of the spine, inferior
    sy = cy + 0.62 * ay  # spine centre, posterior
    for side in (-1.0, 1.0):
        kc = np.array([cx + side * 0.5 * ax, sy - 0.1 * ay, fov[2] * rng.uniform(0.2, 0.3)])
        ka = np.array([0.12 * ax, 0.2 * ay, 0.17 * fov[2]]) * rng.uniform(0.9, 1.1, 3)
        kid = ((x - f32(kc[0])) / f32(ka[0])) ** 2 + ((y - f32(kc[1])) / f32(ka[1])) ** 2
        kid = kid + ((z - f32(kc[2])) / f32(ka[2])) ** 2 < 1.0
        img[kid] = f32(rng.uniform(130.0, 170.0))

    # spine: vertebral bodies (cancellous bone, cortical rim) separated by discs
    sr = 0.14 * ay
    d_sp = np.sqrt((x - f32(cx)) ** 2 + (y - f32(sy)) ** 2)
    vert = np.broadcast_to(d_sp < sr, shape)
    period = rng.uniform(26.0, 32.0) * scale
    disc = np.broadcast_to(((z + f32(rng.uniform(0, period))) % f32(period)) < f32(0.22 * period), shape)
    cortex = np.broadcast_to(d_sp > sr - 1.6 * scale, shape)
    bone = np.where(cortex, f32(rng.uniform(650.0, 720.0)), f32(rng.uniform(400.0, 500.0)))
    bone = np.where(disc, f32(85.0), bone)
    img[vert] = np.broadcast_to(bone, shape)[vert]

    # aorta: contrast-filled tube left-anterior of the spine (bright like the vessels, not labelled)
    ar = rng.uniform(0.09, 0.11) * ay
    aorta = np.broadcast_to(
        (x - f32(cx + 0.25 * sr)) ** 2 + (y - f32(sy - sr - ar - 1.5 * scale)) ** 2 < f32(ar**2), shape
    )
    vessel_hu = rng.uniform(195.0, 235.0)
    img[aorta] = f32(vessel_hu + rng.uniform(0.0, 30.0))

    # liver: deformed ellipsoid on the patient's right (low i), anterior-superior
    liver_noise, liver_grid = _Noise3D.make(rng, fov, (4, 4, 3), shape, spacing)
    liver = _Liver(
        centre=np.array([cx - 0.4 * ax, cy - 0.05 * ay, fov[2] * rng.uniform(0.58, 0.64)]),
        axes=np.array([0.47 * ax, 0.72 * ay, 0.32 * fov[2]]) * rng.uniform(0.95, 1.05, 3),
        noise=liver_noise,
        amp=rng.uniform(0.07, 0.11),
        bound=(cx, cy, rim * ax, rim * ay),
    )
    rho_l = np.sqrt(
        ((x - f32(liver.centre[0])) / f32(liver.axes[0])) ** 2
        + ((y - f32(liver.centre[1])) / f32(liver.axes[1])) ** 2
        + ((z - f32(liver.centre[2])) / f32(liver.axes[2])) ** 2
    )
    liver_mask = (rho_l + f32(liver.amp) * liver_grid < 1.0) & (rho_b < rim)
    img[liver_mask] = f32(rng.uniform(50.0, 60.0)) + f32(4.0) * soft_noise[liver_mask]

    # vessel tree: redraw (same stream) until the vessel fraction is plausible; keep the closest attempt
    best = None
    lo, hi = _FRACTION_BAND
    for _ in range(6):
        mask = _stamp(shape, spacing, _grow_tree(rng, liver, scale, r_min)) & liver_mask
        frac = float(mask.mean())
        miss = max(lo - frac, frac - hi, 0.0)
        if best is None or miss < best[0]:
            best = (miss, mask)
        if miss == 0.0:
            break
    assert best is not None
    mask = best[1]
    img[mask] = f32(vessel_hu)

    # imaging: partial-volume blur (system PSF) and quantum noise
    img = ndimage.gaussian_filter(
        img, sigma=[sg / sp for sg, sp in zip(_PSF_SIGMA_MM, spacing, strict=True)], truncate=3.0
    )
    img += f32(rng.uniform(10.0, 20.0)) * rng.standard_normal(shape, dtype=f32)
    parts = {"body": np.ascontiguousarray(body), "liver": liver_mask, "spine": np.ascontiguousarray(vert)}
    return img, mask.astype(np.uint8), parts


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def generate_ct_volume(
    seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE, spacing: tuple[float, float, float] = DEFAULT_SPACING
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic contrast-enhanced abdominal CT volume.

    Args:
        seed: seed of ``numpy.random.default_rng``; the output depends on nothing else (no global RNG state).
        shape: array shape ``(i, j, k)``; ``k`` is the slice axis.
        spacing: voxel size in mm the anatomy is rendered for (the same as written by :func:`make_synthetic_ct`).

    Returns:
        ``(image, mask)`` of shape ``shape`` in the stored index order: ``image`` float32 in Hounsfield units,
        ``mask`` uint8 with 1 on the liver vessel tree and 0 elsewhere.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes >= 16, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes, got {spacing}")
    image, mask, _ = _phantom(seed, shape, spacing)
    return image, mask


def ct_affine(shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING) -> np.ndarray:
    """Voxel-to-world (RAS, mm) affine of the written volumes: LPS-like, anisotropic, slightly oblique.

    ``A[:3, :3] = Rz(AFFINE_ROTATION_DEG) @ diag(-s_i, -s_j, s_k)``: the first two axes are flipped with respect to RAS
    (``nibabel.aff2axcodes(A) == ("L", "P", "S")``) and rotated by a few degrees about the superior axis; the
    translation puts the volume centre at ``AFFINE_CENTRE_RAS``.
    """
    t = np.deg2rad(AFFINE_ROTATION_DEG)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    m = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    centre_index = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = np.asarray(AFFINE_CENTRE_RAS) - m @ centre_index
    return affine


def _nifti(array: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)  # scanner coordinates: readers honour qform and sform alike
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def make_synthetic_ct(
    output_dir: str | os.PathLike,
    num_train: int = 16,
    num_val: int = 4,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    seed: int = 0,
) -> str:
    """Write a synthetic CT dataset (int16 HU images, uint8 vessel labels, NIfTI) and its MSD-style datalist.

    Files are ``imagesTr/ct_XXXX.nii.gz`` / ``labelsTr/ct_XXXX.nii.gz`` with the affine of :func:`ct_affine`
    (axcodes ``("L", "P", "S")``, qform/sform code 1); the first ``num_train`` indices form the ``"training"`` list
    and the next ``num_val`` the ``"validation"`` list. Volume ``i`` is rendered from a seed derived from
    ``(seed, i)``. If ``dataset.json`` already exists with the same generator parameters and all its files are
    present, nothing is regenerated. The datalist is written last and atomically, so an interrupted run is never
    mistaken for a complete cache.

    Returns:
        path of ``dataset.json`` in ``output_dir``.
    """
    import nibabel as nib

    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing need 3 entries, got {shape} and {spacing}")
    generator = {
        "seed": int(seed),
        "shape": list(shape),
        "spacing": list(spacing),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "version": GENERATOR_VERSION,
    }
    affine = ct_affine(shape, spacing)
    info = {
        "name": DATASET_NAME,
        "description": "Procedurally generated contrast-enhanced abdominal CT volumes (HU) with binary liver vessel "
        "masks (lightvessel_monai.data.synthetic_3d).",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "vessel"},
        "orientation": "".join(nib.aff2axcodes(affine)),
    }

    def write_pair(i: int, image_path: Path, label_path: Path) -> None:
        image, mask = generate_ct_volume(derived_seed(seed, i), shape=shape, spacing=spacing)
        hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
        nib.save(_nifti(hu, affine), image_path)
        nib.save(_nifti(mask, affine), label_path)

    names = [f"ct_{i:04d}.nii.gz" for i in range(num_train + num_val)]
    what = f"synthetic CT volumes ({shape}, spacing {spacing}, seed {seed})"
    return write_synthetic_dataset(output_dir, generator, names, _FILE_RE, info, write_pair, what, logger)


def main(argv: list[str] | None = None) -> str:
    """CLI entry point: generate (or reuse) the dataset and print the datalist path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train", type=int, default=16)
    parser.add_argument("--num_val", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("I", "J", "K"))
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("SI", "SJ", "SK"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = make_synthetic_ct(
        args.output_dir, args.num_train, args.num_val, tuple(args.shape), tuple(args.spacing), args.seed
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
