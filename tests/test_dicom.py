"""A CT DICOM series written with pydicom loads through MONAI's ITKReader with the values and geometry written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from lightvessel_monai.data.dicom import write_dicom_series

SHAPE = (16, 12, 8)  # columns, rows, slices
SPACING = (0.8, 0.7, 2.5)  # along the row direction, the column direction, the slice direction (mm)
ORIGIN = (-12.5, 30.25, 104.0)  # LPS, mm
SLOPE, INTERCEPT = 2.0, -1024.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _direction(row: tuple, col: tuple, slice_sign: int) -> np.ndarray:
    row_v, col_v = np.asarray(row, float), np.asarray(col, float)
    return np.stack([row_v, col_v, slice_sign * np.cross(row_v, col_v)], axis=1)


GEOMETRIES = {
    # sagittal-like: rows run posterior, columns run inferior, slices stacked along row x col = right (-L)
    "sagittal": (_direction((0, 1, 0), (0, 0, -1), +1), True),
    # flipped axial, slices written against the normal (InstanceNumber order is the reverse of ITK's order)
    "flipped_axial_reversed": (_direction((-1, 0, 0), (0, -1, 0), -1), True),
    # oblique: rotated 25 degrees about an off-axis line (no RAS axis alignment exists)
    "oblique": (_rotation((1.0, 2.0, 0.5), 25.0), False),
}


def _expected(direction: np.ndarray, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume and RAS affine ITK should build: slices sorted by their position along row x column."""
    row, col, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, col)
    positions = [np.asarray(ORIGIN) + k * SPACING[2] * slice_dir for k in range(hu.shape[2])]
    order = np.argsort([p @ normal for p in positions])
    lps = np.eye(4)
    lps[:3, 0] = row * SPACING[0]
    lps[:3, 1] = col * SPACING[1]
    lps[:3, 2] = normal * SPACING[2]
    lps[:3, 3] = positions[order[0]]
    return hu[:, :, order], LPS_TO_RAS @ lps


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    stored = np.random.default_rng(7).integers(0, 2000, SHAPE)
    return (INTERCEPT + SLOPE * stored).astype(np.int16)  # exactly representable with slope 2, intercept -1024


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_dicom_series_loads_with_values_and_geometry(tmp_path: Path, hu: np.ndarray, name: str) -> None:
    direction, axis_aligned = GEOMETRIES[name]
    series_uid = pydicom.uid.generate_uid()
    paths = write_dicom_series(
        hu, tmp_path / name, SPACING, ORIGIN, direction, slope=SLOPE, intercept=INTERCEPT, series_uid=series_uid
    )
    assert len(paths) == SHAPE[2]

    # the headers are what was asked for
    headers = [pydicom.dcmread(p) for p in paths]
    first = headers[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert {h.SeriesInstanceUID for h in headers} == {series_uid}
    assert len({h.StudyInstanceUID for h in headers}) == 1 and len({h.FrameOfReferenceUID for h in headers}) == 1
    assert [h.InstanceNumber for h in headers] == list(range(1, SHAPE[2] + 1))
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (SLOPE, INTERCEPT)
    assert [float(v) for v in first.PixelSpacing] == [SPACING[1], SPACING[0]]
    assert first.pixel_array.shape == (SHAPE[1], SHAPE[0])  # rows, columns
    np.testing.assert_array_equal(first.pixel_array * SLOPE + INTERCEPT, hu[:, :, 0].T)

    expected_array, expected_affine = _expected(direction, hu)
    load = Compose([LoadImaged(keys="image", reader="ITKReader", image_only=True), EnsureChannelFirstd(keys="image")])
    image = load({"image": str(tmp_path / name)})["image"]
    assert isinstance(image, MetaTensor)
    assert tuple(image.shape) == (1, *SHAPE)

    # (1) voxel values: the HU array, slices in ITK's order (ascending along the slice normal)
    np.testing.assert_array_equal(image[0].numpy(), expected_array)
    # (2) the affine: LPS geometry written, with x and y negated for RAS
    affine = image.affine.numpy()
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), SPACING, atol=1e-5)

    if not axis_aligned:
        return
    # (3) after Orientationd("RAS"), the rotation is diagonal and positive, and every voxel keeps its world position
    ras = Orientationd(keys="image", axcodes="RAS")({"image": image})["image"]
    ras_affine = ras.affine.numpy()
    rotation = ras_affine[:3, :3]
    np.testing.assert_allclose(rotation, np.diag(np.diag(rotation)), atol=1e-6)
    assert (np.diag(rotation) > 0).all()
    index = np.stack(np.meshgrid(*[np.arange(s) for s in ras.shape[1:]], indexing="ij"), axis=-1).reshape(-1, 3)
    world = index @ ras_affine[:3, :3].T + ras_affine[:3, 3]
    source = np.rint((world - expected_affine[:3, 3]) @ np.linalg.inv(expected_affine[:3, :3]).T).astype(int)
    np.testing.assert_array_equal(ras[0].numpy().reshape(-1), expected_array[tuple(source.T)])
    assert sorted(ras.shape[1:]) == sorted(SHAPE)
