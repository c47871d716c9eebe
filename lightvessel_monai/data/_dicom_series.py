"""Pre-flight checks of DICOM files and series folders, from their headers (pydicom; no pixel data decoded)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lightvessel_monai.data._unreadable import DICOM_SUFFIXES, Unreadable, one_line

__all__ = ["read_dicom"]

_PIXEL_DATA = 0x7FE00010
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index, not an image
_SLICE_TOL_MM = 0.01  # slice positions closer than this are the same position
_SLICE_TOL_REL = 0.05  # a step between slices may differ from the usual slice spacing by this fraction


def read_dicom(path: str) -> None:
    """Read the DICOM headers of a file, or of every file of a folder, which must hold one complete series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not os.path.isdir(path):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:
            raise Unreadable(f"cannot be read as DICOM ({one_line(err)})") from None
        return
    files = sorted(e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
    if not files:
        raise Unreadable("is an empty folder (expected DICOM files)")
    headers: list[tuple[str, Any]] = []
    first_error: str | None = None
    for file in files:
        name = os.path.basename(file)
        if os.path.getsize(file) == 0:
            raise Unreadable(f"holds an empty file {name} (0 bytes)")
        try:
            # headers only: the pixel data (larger than defer_size) is skipped, its offset and length kept
            ds = pydicom.dcmread(file, defer_size=1024)
        except InvalidDicomError as err:  # not DICOM at all (a stray text file): ITK skips it too
            if name.lower().endswith(DICOM_SUFFIXES):
                raise Unreadable(f"cannot be read as DICOM ({name}: {one_line(err)})") from None
            first_error = first_error or f"{name}: {one_line(err)}"
            continue
        except Exception as err:  # DICOM, but truncated or corrupt
            raise Unreadable(f"cannot be read as DICOM ({name}: {one_line(err)})") from None
        try:
            if name.upper() == "DICOMDIR" or str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
                continue
            _check_dicom_complete(name, ds, os.path.getsize(file))
        except Unreadable:
            raise
        except Exception as err:  # pydicom parses elements lazily: a corrupt one fails when first read
            raise Unreadable(f"cannot be read as DICOM ({name}: {one_line(err)})") from None
        headers.append((name, ds))
    if not headers:
        raise Unreadable(f"cannot be read as DICOM ({first_error or 'it holds only a DICOMDIR'})")
    try:
        _check_dicom_series(headers)
    except Unreadable:
        raise
    except Exception as err:
        # pydicom parses values lazily: a corrupt value (ImagePositionPatient, a VR, ...) fails only here
        raise Unreadable(f"holds a DICOM header value that cannot be read ({one_line(err)})") from None


def _check_dicom_complete(name: str, ds: Any, size: int) -> None:
    """A DICOM image file cut short: pydicom stops silently at the end of the file, so look for what is missing."""
    if _PIXEL_DATA not in ds:
        raise Unreadable(f"cannot be read as DICOM ({name}: no pixel data; truncated, or not an image)")
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    start, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if isinstance(start, int) and isinstance(length, int) and length != 0xFFFFFFFF and start + length > size:
        raise Unreadable(f"cannot be read as DICOM ({name} is truncated: {size} of {start + length} bytes)")
    if "SeriesInstanceUID" not in ds:
        raise Unreadable(f"cannot be read as DICOM ({name}: no SeriesInstanceUID)")


def _check_dicom_series(headers: list[tuple[str, Any]]) -> None:
    """One series, slices of one size and orientation, and no missing or duplicate slice positions."""
    series: dict[str, list[str]] = {}
    for name, ds in headers:
        series.setdefault(str(ds.SeriesInstanceUID), []).append(name)
    if len(series) > 1:
        listed = ", ".join(f"{uid} ({len(names)} files)" for uid, names in list(series.items())[:3])
        more = ", ..." if len(series) > 3 else ""
        raise Unreadable(
            f"holds {len(series)} DICOM series (SeriesInstanceUID {listed}{more}) where one series is expected"
        )
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))): name for name, ds in headers}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} in {name}" for (r, c), name in list(sizes.items())[:3])
        raise Unreadable(f"has slices of different sizes (rows x columns: {listed})")
    if len(headers) < 2:
        return

    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in headers):
        orientation = np.asarray([float(v) for v in headers[0][1].ImageOrientationPatient])
        for name, ds in headers[1:]:
            other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            if other.shape != orientation.shape or not np.allclose(other, orientation, atol=1e-3):
                raise Unreadable(
                    f"has slices of different orientations (ImageOrientationPatient of {name} differs from "
                    f"{headers[0][0]})"
                )
        normal = np.cross(orientation[:3], orientation[3:6])
        slices = sorted(
            (float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), name) for name, ds in headers
        )
        positions = np.asarray([p for p, _ in slices])
        steps = np.diff(positions)
        same = np.flatnonzero(steps < _SLICE_TOL_MM)
        if same.size:
            i = int(same[0])
            raise Unreadable(
                f"has several slices at the same position ({slices[i][1]} and {slices[i + 1][1]} at "
                f"{positions[i]:.4g} mm along the slice normal)"
            )
        if len(steps) < 2:
            return
        spacing = float(np.median(steps))
        tol = max(_SLICE_TOL_MM, _SLICE_TOL_REL * spacing)
        odd = np.flatnonzero(np.abs(steps - spacing) > tol)
        if odd.size:
            i = int(odd[0])
            step = float(steps[i])
            between = f"{slices[i][1]} and {slices[i + 1][1]}"
            missing = round(step / spacing) - 1
            if missing >= 1 and abs(step - (missing + 1) * spacing) <= tol * (missing + 1):
                raise Unreadable(
                    f"is missing {missing} slice{'s' if missing > 1 else ''}: a gap of {step:.4g} mm between "
                    f"{between} where the slice spacing is {spacing:.4g} mm"
                )
            raise Unreadable(
                f"has non-uniform slice spacing: {step:.4g} mm between {between} where the slice spacing is "
                f"{spacing:.4g} mm"
            )
        return

    # no geometry: fall back on the instance numbers
    if all("InstanceNumber" in ds and ds.InstanceNumber is not None for _, ds in headers):
        numbered = sorted((int(ds.InstanceNumber), name) for name, ds in headers)
        for (a, name_a), (b, name_b) in zip(numbered, numbered[1:], strict=False):
            if b == a:
                raise Unreadable(f"has several slices with InstanceNumber {a} ({name_a} and {name_b})")
            if b > a + 1:
                raise Unreadable(f"is missing slices: InstanceNumber jumps from {a} ({name_a}) to {b} ({name_b})")
