"""Write a volume as a CT DICOM series (one file per slice), or frames as a multi-frame XA cine run.

:func:`write_xa_cine` writes 2D frames (e.g. synthetic angiograms) as one uncompressed multi-frame X-Ray Angiographic
Image, the file a cath-lab system exports for a run (tests, benchmarks, trying the DICOM path without real data).

The array is indexed like the volumes MONAI's ``ITKReader`` returns: ``array[i, j, k]`` is column ``i``
(along the row direction), row ``j`` (along the column direction) of slice ``k``. The geometry is in DICOM's
patient coordinates (LPS, millimetres): ``direction`` holds the row direction, the column direction and the
slice direction as its columns, and slice ``k`` lies at ``origin + k * spacing[2] * direction[:, 2]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_dicom_series", "write_xa_cine"]


def _ds(values: Sequence[float]) -> list[float]:
    """Round for a DICOM decimal string (at most 16 characters per value)."""
    return [float(f"{float(v):.6f}") for v in values]


def write_dicom_series(
    array_hu: np.ndarray,
    out_dir: str | os.PathLike,
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | Sequence[Sequence[float]] | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_position: str = "HFS",
) -> list[str]:
    """Write ``array_hu`` (Hounsfield units, shape ``(columns, rows, slices)``) as a CT DICOM series.

    Args:
        array_hu: the 3D volume in HU. Stored values are ``round((HU - intercept) / slope)``, as uint16
            (int16 when some are negative); values that this does not represent exactly are rounded.
        out_dir: the folder to write ``slice_000.dcm``, ... into (created if needed).
        spacing: ``(column spacing, row spacing, slice spacing)`` in mm, i.e. along the row direction,
            the column direction and the slice direction.
        origin: the LPS position (mm) of the centre of the first voxel of the first slice.
        direction: 3x3 matrix whose columns are the unit row, column and slice directions (LPS); the
            identity (axial) when ``None``. The slice direction may point against ``row x column``.
        slope, intercept: RescaleSlope and RescaleIntercept.
        series_uid, study_uid, frame_of_reference_uid: the UIDs shared by all files (new ones when ``None``).
        patient_position: PatientPosition, e.g. ``"HFS"``.

    Returns:
        The paths of the written files, in slice order (InstanceNumber 1, 2, ...).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    array = np.asarray(array_hu)
    if array.ndim != 3:
        raise ValueError(f"write_dicom_series expects a 3D array, got shape {array.shape}")
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    if direction.shape != (3, 3):
        raise ValueError(f"direction must be a 3x3 matrix, got shape {direction.shape}")
    spacing = [float(s) for s in spacing]
    origin_v = np.asarray(origin, dtype=float)
    if slope == 0:
        raise ValueError("slope must not be 0")

    stored = np.rint((array.astype(np.float64) - intercept) / slope)
    signed = bool(stored.min() < 0)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"stored values {stored.min():g}..{stored.max():g} do not fit {np.dtype(dtype).name}")
    stored = stored.astype(dtype)

    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row_dir, col_dir)
    columns, rows, n_slices = array.shape

    paths = []
    for k in range(n_slices):
        position = origin_v + k * spacing[2] * slice_dir
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = "Synthetic^Volume"
        ds.PatientID = "synthetic"
        ds.PatientPosition = patient_position
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds([*row_dir, *col_dir])
        ds.SliceLocation = _ds([float(position @ normal)])[0]
        ds.PixelSpacing = _ds([spacing[1], spacing[0]])  # DICOM order: between rows, then between columns
        ds.SliceThickness = _ds([spacing[2]])[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = _ds([slope])[0]
        ds.RescaleIntercept = _ds([intercept])[0]
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<" + np.dtype(dtype).str[1:]).tobytes()

        path = out / f"slice_{k:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(str(path))
    return paths


def write_xa_cine(
    frames: np.ndarray,
    path: str | os.PathLike,
    frame_rate: float = 15.0,
    patient_name: str = "Synthetic^Angiogram",
    patient_id: str = "synthetic",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> str:
    """Write ``frames`` ``(T, H, W)`` uint8 (or uint16) as one multi-frame XA DICOM file at ``path`` (no extension
    needed), Explicit VR Little Endian, MONOCHROME2, with the cine attributes (``CineRate``, ``FrameTime``)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        XRayAngiographicImageStorage,
        generate_uid,
    )

    array = np.asarray(frames)
    if array.ndim != 3 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_xa_cine expects (T, H, W) uint8 or uint16 frames, got {array.shape} {array.dtype}")
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = XRayAngiographicImageStorage, sop_uid
    ds.Modality = "XA"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), series_uid or generate_uid()
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "LightVessel-MONAI synthetic"
    ds.CineRate = int(round(frame_rate))
    ds.FrameTime = _ds([1000.0 / frame_rate])[0]
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.NumberOfFrames = array.shape[0]
    ds.Rows, ds.Columns = array.shape[1], array.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 * array.dtype.itemsize
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return str(path)
