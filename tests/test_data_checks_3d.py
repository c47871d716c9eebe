"""3D bad inputs: 4D volumes, label affines that differ from the image, broken DICOM series, empty NIfTI."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from lightvessel_monai.data.checks import check_datalist
from lightvessel_monai.data.dicom import write_dicom_series
from lightvessel_monai.errors import DataError

SHAPE = (16, 16, 8)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _mask(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(s // 4, s // 2) for s in shape)] = 1
    return mask


def _affine(spacing: tuple[float, float, float] = (0.8, 0.8, 2.5), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _pair(root: Path, name: str = "a", image_shape: tuple[int, ...] = SHAPE, label_affine=None) -> dict:
    image = np.random.default_rng(0).standard_normal(image_shape).astype(np.float32)
    return {
        "image": _nifti(root / "imagesTr" / f"{name}.nii.gz", image, _affine()),
        "label": _nifti(
            root / "labelsTr" / f"{name}.nii.gz", _mask(), _affine() if label_affine is None else label_affine
        ),
    }


def _raises(datalist: list, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        check_datalist(datalist, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------- dimensions


def test_4d_image_where_3d_expected(tmp_path: Path) -> None:
    entry = _pair(tmp_path, image_shape=(*SHAPE, 3))
    assert check_datalist([entry]) == [entry]  # not checked unless asked for
    message = _raises([entry], spatial_dims=3)
    assert message == (
        f"datalist entry 0: image {entry['image']} has 4 dimensions (16, 16, 8, 3) where 3 spatial dimensions "
        "are expected"
    )


def test_4d_label_where_3d_expected(tmp_path: Path) -> None:
    entry = _pair(tmp_path)
    entry["label"] = _nifti(tmp_path / "labelsTr" / "t.nii.gz", np.stack([_mask(), _mask()], -1), _affine())
    message = _raises([entry], spatial_dims=3, source="datalist d.json key 'training'")
    assert message.startswith(f"datalist d.json key 'training' entry 0: label {entry['label']} has 4 dimensions")


def test_trailing_singletons_are_not_dimensions(tmp_path: Path) -> None:
    entry = _pair(tmp_path, image_shape=(*SHAPE, 1))
    assert check_datalist([entry], spatial_dims=3) == [entry]
    flat = {"image": _nifti(tmp_path / "flat.nii.gz", np.zeros((16, 16, 1), np.float32))}
    assert check_datalist([flat], keys=["image"], label_key=None, spatial_dims=2) == [flat]
    assert check_datalist([flat], keys=["image"], label_key=None, spatial_dims=3) == [flat]  # one slice deep
    plane = {"image": _nifti(tmp_path / "plane.nii.gz", np.zeros((16, 16), np.float32))}
    message = _raises([plane], keys=["image"], label_key=None, spatial_dims=3)
    assert message.endswith("plane.nii.gz has 2 dimensions (16, 16) where 3 spatial dimensions are expected")


def test_2d_image_where_3d_expected(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    entry = {"image": str(path)}
    assert check_datalist([entry], keys=["image"], label_key=None, spatial_dims=2) == [entry]
    message = _raises([entry], keys=["image"], label_key=None, spatial_dims=3)
    assert (
        message == f"datalist entry 0: image {path} has 2 dimensions (20, 30) where 3 spatial dimensions are expected"
    )


# --------------------------------------------------------------------------------------------- affine


def test_label_affine_differs_from_image(tmp_path: Path) -> None:
    entry = _pair(tmp_path, label_affine=_affine(origin=(-10.0, 22.5, 5.0)))
    message = _raises([_pair(tmp_path, "b"), entry])
    assert message == (
        f"datalist entry 1: label {entry['label']} has a different affine than image {entry['image']}: "
        "largest difference 2.5 mm (tolerance 0.001 mm), origin (-10, 22.5, 5) vs (-10, 20, 5)"
    )
    assert check_datalist([entry], affine_tol=None) == [entry]
    assert check_datalist([entry], affine_tol=3.0) == [entry]


def test_label_spacing_and_direction_differ(tmp_path: Path) -> None:
    entry = _pair(tmp_path, label_affine=_affine(spacing=(0.8, 0.8, 2.0)))
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: label {entry['label']} has a different affine than image ")
    assert message.endswith("spacing (0.8, 0.8, 2) vs (0.8, 0.8, 2.5)")

    flipped = _affine()
    flipped[:3, 0] *= -1
    flipped[:3, 3] = (-10.0, 20.0, 5.0)
    entry = _pair(tmp_path, "c", label_affine=flipped)
    assert _raises([entry]).endswith("direction differs")


def test_affine_within_tolerance_passes(tmp_path: Path) -> None:
    entry = _pair(tmp_path, label_affine=_affine(origin=(-10.0004, 20.0, 5.0)))
    assert check_datalist([entry]) == [entry]


# ---------------------------------------------------------------------------------------------- DICOM


def _series(root: Path, n_slices: int = 6, series_uid: str | None = None, **kwargs) -> Path:
    hu = np.full((8, 6, n_slices), -1000, np.int16)
    write_dicom_series(hu, root, spacing=(0.8, 0.8, 2.5), origin=(-3.0, 4.0, 10.0), series_uid=series_uid, **kwargs)
    return root


def _dicom_entry(folder: Path) -> dict:
    return {"image": str(folder)}


def _check_dicom(folder: Path, **kwargs) -> str:
    return _raises([_dicom_entry(folder)], keys=["image"], label_key=None, **kwargs)


def test_valid_dicom_series_passes(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    (folder / "README.txt").write_text("not DICOM")  # skipped, as ITK does
    entry = {"image": str(folder), "label": _nifti(tmp_path / "label.nii.gz", _mask((8, 6, 6)))}
    assert check_datalist([entry], spatial_dims=3) == [entry]


def test_dicom_folder_with_mixed_series(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct", series_uid="1.2.3.1")
    for path in _series(tmp_path / "other", n_slices=2, series_uid="1.2.3.2").iterdir():
        shutil.move(path, folder / f"other_{path.name}")
    message = _check_dicom(folder)
    assert message == (
        f"datalist entry 0: image {folder} holds 2 DICOM series (SeriesInstanceUID 1.2.3.2 (2 files), "
        "1.2.3.1 (6 files)) where one series is expected"
    )


def test_dicom_folder_with_a_missing_slice(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    (folder / "slice_003.dcm").unlink()
    message = _check_dicom(folder)
    assert message == (
        f"datalist entry 0: image {folder} is missing 1 slice: a gap of 5 mm between slice_002.dcm and "
        "slice_004.dcm where the slice spacing is 2.5 mm"
    )
    (folder / "slice_004.dcm").unlink()
    assert "is missing 2 slices: a gap of 7.5 mm" in _check_dicom(folder)


def test_dicom_folder_with_reversed_slices_and_a_missing_one(tmp_path: Path) -> None:
    """Slices written against the normal are sorted by position, not by file name."""
    direction = np.diag([1.0, 1.0, -1.0])
    folder = _series(tmp_path / "ct", n_slices=5, direction=direction)
    entry = _dicom_entry(folder)
    assert check_datalist([entry], keys=["image"], label_key=None) == [entry]
    (folder / "slice_001.dcm").unlink()
    assert "is missing 1 slice: a gap of 5 mm between slice_002.dcm and slice_000.dcm" in _check_dicom(folder)


def test_dicom_folder_with_duplicate_and_uneven_slices(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    shutil.copy(folder / "slice_002.dcm", folder / "slice_002_copy.dcm")
    message = _check_dicom(folder)
    assert message == (
        f"datalist entry 0: image {folder} has several slices at the same position (slice_002.dcm and "
        "slice_002_copy.dcm at 15 mm along the slice normal)"
    )
    (folder / "slice_002_copy.dcm").unlink()
    ds = pydicom.dcmread(folder / "slice_005.dcm")
    ds.ImagePositionPatient = [-3.0, 4.0, 23.5]  # 1 mm further than the 2.5 mm step
    ds.save_as(folder / "slice_005.dcm")
    assert (
        "has non-uniform slice spacing: 3.5 mm between slice_004.dcm and slice_005.dcm where the slice spacing "
        "is 2.5 mm" in _check_dicom(folder)
    )


def test_dicom_folder_without_geometry_checks_instance_numbers(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    entry = _dicom_entry(folder)
    assert check_datalist([entry], keys=["image"], label_key=None) == [entry]
    (folder / "slice_002.dcm").unlink()
    message = _check_dicom(folder)
    assert message == (
        f"datalist entry 0: image {folder} is missing slices: InstanceNumber jumps from 2 (slice_001.dcm) "
        "to 4 (slice_003.dcm)"
    )


def test_dicom_folder_with_empty_or_truncated_file(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    data = (folder / "slice_003.dcm").read_bytes()
    (folder / "slice_003.dcm").write_bytes(b"")
    assert _check_dicom(folder) == f"datalist entry 0: image {folder} holds an empty file slice_003.dcm (0 bytes)"
    prefix = f"datalist entry 0: image {folder} cannot be read as DICOM (slice_003.dcm"
    for cut in (100, 400, 700, 900):  # inside the preamble, the file meta, a UID, the image attributes
        (folder / "slice_003.dcm").write_bytes(data[:cut])
        assert _check_dicom(folder).startswith(prefix)
    (folder / "slice_003.dcm").write_bytes(data[:-10])  # inside the pixel data
    assert _check_dicom(folder) == f"{prefix} is truncated: {len(data) - 10} of {len(data)} bytes)"


def test_dicom_folder_with_no_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    assert _check_dicom(folder).startswith(f"datalist entry 0: image {folder} cannot be read as DICOM (a.txt: ")


# ------------------------------------------------------------------------------------ empty NIfTI


@pytest.mark.parametrize("key", ["image", "label"])
def test_empty_nifti_gz(tmp_path: Path, key: str) -> None:
    entry = _pair(tmp_path)
    Path(entry[key]).write_bytes(b"")
    assert _raises([entry]) == f"datalist entry 0: {key} {entry[key]} is empty (0 bytes)"


@pytest.mark.parametrize("key", ["image", "label"])
def test_truncated_nifti_gz_header(tmp_path: Path, key: str) -> None:
    entry = _pair(tmp_path)
    Path(entry[key]).write_bytes(Path(entry[key]).read_bytes()[:30])  # not even a full header
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: {key} {entry[key]} ")
    assert "cannot be read as NIfTI" in message or "truncated" in message


# ------------------------------------------------------------------------------------------- NaN and Inf


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_an_image_with_nan_or_inf_voxels_fails_pre_flight(tmp_path: Path, bad: float, suffix: str) -> None:
    entry = _pair(tmp_path)
    image = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    image[3, 4, 5] = bad
    image[0, 0, 0] = bad
    entry["image"] = _nifti(tmp_path / f"bad{suffix}", image, _affine())
    message = _raises([entry], spatial_dims=3)
    assert entry["image"] in message and "holds 2 NaN or infinite voxel values" in message


def test_a_float_label_with_nan_fails_pre_flight(tmp_path: Path) -> None:
    entry = _pair(tmp_path)
    label = _mask().astype(np.float32)
    label[1, 1, 1] = np.nan
    entry["label"] = _nifti(tmp_path / "bad_label.nii.gz", label, _affine())
    message = _raises([entry], spatial_dims=3)
    assert entry["label"] in message and "NaN" in message


def test_a_float_tiff_with_nan_fails_pre_flight(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    image[2, 3] = np.nan
    path = tmp_path / "image.tif"
    Image.fromarray(image, mode="F").save(path)
    label = tmp_path / "label.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(label)
    message = _raises([{"image": str(path), "label": str(label)}], spatial_dims=2)
    assert str(path) in message and "holds 1 NaN" in message
