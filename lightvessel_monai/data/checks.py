"""Load a decathlon-style datalist and check its files before training starts.

Every problem a user can fix (a missing file, a truncated volume, an image and label of different
sizes, a label with undeclared classes) raises :class:`~lightvessel_monai.errors.DataError` with a
one-line message naming the datalist, the entry index and the file, instead of failing deep inside a
data loader worker after the networks are built.

The readers are small and format-specific (Pillow for 2D images, nibabel for NIfTI, pydicom for DICOM)
so that checking a datalist costs a fraction of one epoch: images are opened and decoded (or, for
NIfTI, checked for their full size) and labels are read to check their values.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightvessel_monai.errors import ConfigKeyError, DataError

__all__ = ["load_datalist", "check_datalist", "count_outside"]

logger = logging.getLogger(__name__)

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = (".dcm", ".dicom")
# 2D suffixes that MONAI's LoadImage, left to choose its reader, reads with ITK (its PILReader claims only
# .png, .jpg, .jpeg and .bmp): pre-flight reads these with ITK too, so that it accepts what the pipeline can read
_ITK_2D_SUFFIXES = (".tif", ".tiff", ".gif")
_MAX_LISTED = 5  # unexpected label values listed in a message
_GZIP_CHUNK = 1 << 24
_PIXEL_DATA = 0x7FE00010
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index, not an image
_SLICE_TOL_MM = 0.01  # slice positions closer than this are the same position
_SLICE_TOL_REL = 0.05  # a step between slices may differ from the usual slice spacing by this fraction


# --------------------------------------------------------------------------------------------- datalist


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def load_datalist(datalist_path: str, data_list_key: str = "training", base_dir: str | None = None) -> list[dict]:
    """Read ``data_list_key`` of a decathlon-style JSON datalist with :func:`monai.data.load_decathlon_datalist`.

    Relative paths are joined to ``base_dir`` (default: the folder of the datalist). A missing or
    invalid file, a missing key, or an empty or malformed list raises a one-line :class:`DataError`.
    """
    from monai.data import load_decathlon_datalist

    path = Path(datalist_path)
    name = os.fspath(datalist_path)
    if not path.exists():
        raise DataError(f"datalist {name} does not exist")
    if not path.is_file():
        raise DataError(f"datalist {name} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"datalist {name} cannot be read: {_one_line(err)}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"datalist {name} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if not isinstance(content, dict):
        raise DataError(
            f"datalist {name} must be a JSON object with a '{data_list_key}' list, not a JSON {_json_type(content)}"
        )
    if data_list_key not in content:
        keys = list(content)
        listed = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "") if keys else "none"
        raise DataError(f"datalist {name} has no key '{data_list_key}' (keys: {listed})")
    items = content[data_list_key]
    if not isinstance(items, list):
        raise DataError(
            f"datalist {name} key '{data_list_key}' must be a list of entries, not a JSON {_json_type(items)}"
        )
    if not items:
        raise DataError(f"datalist {name} key '{data_list_key}' is empty")
    # MONAI accepts a bare list of image paths under "test"; everywhere else entries are objects.
    bare_paths = data_list_key == "test" and not isinstance(items[0], dict)
    for index, item in enumerate(items):
        ok = isinstance(item, str) if bare_paths else isinstance(item, dict)
        if not ok:
            expected = "an image path" if bare_paths else 'an object such as {"image": ..., "label": ...}'
            raise DataError(
                f"datalist {name} key '{data_list_key}' entry {index} must be {expected}, not a JSON {_json_type(item)}"
            )
    try:
        return load_decathlon_datalist(path, data_list_key=data_list_key, base_dir=base_dir)
    except (ValueError, TypeError, OSError) as err:
        raise DataError(f"datalist {name} key '{data_list_key}' cannot be loaded: {_one_line(err)}") from None


# -------------------------------------------------------------------------------------------------- files


class _Unreadable(Exception):
    """Raised by the readers; ``check_datalist`` turns it into a :class:`DataError` naming the entry."""


@dataclass(frozen=True)
class _Info:
    """What the readers learn about a file: ``None`` where the format does not tell (DICOM, unknown)."""

    shape: tuple[int, ...] | None = None  # spatial shape, compared across an entry
    full_shape: tuple[int, ...] | None = None  # every dimension, for the ``spatial_dims`` check
    affine: np.ndarray | None = None  # voxel-to-world matrix (NIfTI), compared across an entry
    channels: int | None = None  # colour channels of a 2D image file (PIL bands: L 1, LA 2, RGB 3, RGBA 4)


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format(path: str) -> str:
    lower = path.lower()
    if os.path.isdir(path):
        return "dicom_dir"
    if lower.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(_PIL_SUFFIXES):
        return "pil"
    if lower.endswith(_DICOM_SUFFIXES):
        return "dicom"
    return _sniff(path)


_NOT_AN_IMAGE = (
    "is not an image this bundle reads (PNG, JPEG, TIFF, GIF, BMP, NIfTI, DICOM, NRRD, MetaImage), "
    "judged by its content"
)

_MAGIC = (  # leading bytes of the formats the bundle's readers (PIL, nibabel, pydicom, ITK) read
    (b"\x89PNG\r\n\x1a\n", "pil"),
    (b"\xff\xd8\xff", "pil"),  # JPEG
    (b"II*\x00", "pil"),  # TIFF, little-endian
    (b"MM\x00*", "pil"),  # TIFF, big-endian
    (b"GIF8", "pil"),
    (b"BM", "pil"),
    (b"\x1f\x8b", "nifti"),  # gzip: a compressed NIfTI is the one gzip format the readers take
    (b"NRRD", "other"),
    (b"ObjectType", "other"),  # MetaImage header
)


def _sniff(path: str) -> str:
    """The format of a file with an unknown extension, from its content (``"unknown"`` when none matches).

    A datalist may name any file, so pre-flight never trusts a name: ``../../etc/passwd`` is refused here, before a
    reader gets it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError:
        return "other"  # the caller reports the OSError with the file's name
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00"):
        return "nifti"
    return "unknown"


def _nifti_expected_bytes(img: Any) -> int:
    """Size of the uncompressed single-file NIfTI: data offset plus the voxel data."""
    proxy = img.dataobj  # an ArrayProxy: the offset and on-disk dtype that reading the data will use
    offset = int(getattr(proxy, "offset", img.header.get_data_offset()))
    dtype = np.dtype(getattr(proxy, "dtype", img.header.get_data_dtype()))
    return offset + math.prod(int(s) for s in img.shape) * dtype.itemsize


def _check_gzip_complete(path: str, expected: int) -> None:
    """Fail when a ``.nii.gz`` holds less than ``expected`` uncompressed bytes (truncated or corrupt).

    The gzip trailer stores the uncompressed size modulo 2**32: when it matches, the file is complete
    and nothing is decompressed. Otherwise (a truncated file, or a multi-member gzip) the file is
    decompressed in chunks, which checks the CRC and the end-of-stream marker.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
            if isize == expected % (1 << 32):
                return
    total = 0
    try:
        with gzip.open(path, "rb") as g:
            while chunk := g.read(_GZIP_CHUNK):
                total += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise _Unreadable(f"is truncated or corrupt ({_one_line(err)})") from None
    if total < expected:
        raise _Unreadable(f"is truncated: {total} of {expected} uncompressed bytes")


def _load_nifti(path: str) -> Any:
    import nibabel as nib

    try:
        img = nib.load(path)
        # MONAI's NibabelReader reads both orientations: an invalid quaternion fails there, even when the sform is
        # used (found by tests/test_fuzz.py)
        img.get_qform()
        img.get_sform()
        return img
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError, ValueError...
        raise _Unreadable(f"cannot be read as NIfTI ({_one_line(err)})") from None


def _nifti_spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """The first 3 dims are spatial; further dims (channels, a trailing singleton, time) are not."""
    return tuple(int(s) for s in shape[:3])


def _read_dicom(path: str) -> None:
    """Read the DICOM headers of a file, or of every file of a folder, which must hold one complete series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not os.path.isdir(path):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:
            raise _Unreadable(f"cannot be read as DICOM ({_one_line(err)})") from None
        return
    files = sorted(e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
    if not files:
        raise _Unreadable("is an empty folder (expected DICOM files)")
    headers: list[tuple[str, Any]] = []
    first_error: str | None = None
    for file in files:
        name = os.path.basename(file)
        if os.path.getsize(file) == 0:
            raise _Unreadable(f"holds an empty file {name} (0 bytes)")
        try:
            # headers only: the pixel data (larger than defer_size) is skipped, its offset and length kept
            ds = pydicom.dcmread(file, defer_size=1024)
        except InvalidDicomError as err:  # not DICOM at all (a stray text file): ITK skips it too
            if name.lower().endswith(_DICOM_SUFFIXES):
                raise _Unreadable(f"cannot be read as DICOM ({name}: {_one_line(err)})") from None
            first_error = first_error or f"{name}: {_one_line(err)}"
            continue
        except Exception as err:  # DICOM, but truncated or corrupt
            raise _Unreadable(f"cannot be read as DICOM ({name}: {_one_line(err)})") from None
        try:
            if name.upper() == "DICOMDIR" or str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
                continue
            _check_dicom_complete(name, ds, os.path.getsize(file))
        except _Unreadable:
            raise
        except Exception as err:  # pydicom parses elements lazily: a corrupt one fails when first read
            raise _Unreadable(f"cannot be read as DICOM ({name}: {_one_line(err)})") from None
        headers.append((name, ds))
    if not headers:
        raise _Unreadable(f"cannot be read as DICOM ({first_error or 'it holds only a DICOMDIR'})")
    try:
        _check_dicom_series(headers)
    except _Unreadable:
        raise
    except Exception as err:
        # pydicom parses values lazily: a corrupt value (ImagePositionPatient, a VR, ...) fails only here
        raise _Unreadable(f"holds a DICOM header value that cannot be read ({_one_line(err)})") from None


def _check_dicom_complete(name: str, ds: Any, size: int) -> None:
    """A DICOM image file cut short: pydicom stops silently at the end of the file, so look for what is missing."""
    if _PIXEL_DATA not in ds:
        raise _Unreadable(f"cannot be read as DICOM ({name}: no pixel data; truncated, or not an image)")
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    start, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if isinstance(start, int) and isinstance(length, int) and length != 0xFFFFFFFF and start + length > size:
        raise _Unreadable(f"cannot be read as DICOM ({name} is truncated: {size} of {start + length} bytes)")
    if "SeriesInstanceUID" not in ds:
        raise _Unreadable(f"cannot be read as DICOM ({name}: no SeriesInstanceUID)")


def _check_dicom_series(headers: list[tuple[str, Any]]) -> None:
    """One series, slices of one size and orientation, and no missing or duplicate slice positions."""
    series: dict[str, list[str]] = {}
    for name, ds in headers:
        series.setdefault(str(ds.SeriesInstanceUID), []).append(name)
    if len(series) > 1:
        listed = ", ".join(f"{uid} ({len(names)} files)" for uid, names in list(series.items())[:3])
        more = ", ..." if len(series) > 3 else ""
        raise _Unreadable(
            f"holds {len(series)} DICOM series (SeriesInstanceUID {listed}{more}) where one series is expected"
        )
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))): name for name, ds in headers}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} in {name}" for (r, c), name in list(sizes.items())[:3])
        raise _Unreadable(f"has slices of different sizes (rows x columns: {listed})")
    if len(headers) < 2:
        return

    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in headers):
        orientation = np.asarray([float(v) for v in headers[0][1].ImageOrientationPatient])
        for name, ds in headers[1:]:
            other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            if other.shape != orientation.shape or not np.allclose(other, orientation, atol=1e-3):
                raise _Unreadable(
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
            raise _Unreadable(
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
                raise _Unreadable(
                    f"is missing {missing} slice{'s' if missing > 1 else ''}: a gap of {step:.4g} mm between "
                    f"{between} where the slice spacing is {spacing:.4g} mm"
                )
            raise _Unreadable(
                f"has non-uniform slice spacing: {step:.4g} mm between {between} where the slice spacing is "
                f"{spacing:.4g} mm"
            )
        return

    # no geometry: fall back on the instance numbers
    if all("InstanceNumber" in ds and ds.InstanceNumber is not None for _, ds in headers):
        numbered = sorted((int(ds.InstanceNumber), name) for name, ds in headers)
        for (a, name_a), (b, name_b) in zip(numbered, numbered[1:], strict=False):
            if b == a:
                raise _Unreadable(f"has several slices with InstanceNumber {a} ({name_a} and {name_b})")
            if b > a + 1:
                raise _Unreadable(f"is missing slices: InstanceNumber jumps from {a} ({name_a}) to {b} ({name_b})")


def _check_not_empty(path: str) -> None:
    if not os.path.isdir(path) and os.path.getsize(path) == 0:
        raise _Unreadable("is empty (0 bytes)")


def _spatial_shape(path: str) -> _Info:
    """Open ``path``, check that it is complete, and return its shapes (and affine, for NIfTI).

    2D images give the spatial shape ``(H, W)`` (colour channels are not spatial); NIfTI gives its first
    3 dims as the spatial shape. DICOM and unknown formats are only checked for readability and give no
    shape (no shape comparison).
    """
    _check_not_empty(path)
    kind = _format(path)
    if kind == "unknown":
        raise _Unreadable(_NOT_AN_IMAGE)
    if kind == "pil":
        from PIL import Image

        try:
            with Image.open(path) as im:
                shape, channels = (im.height, im.width), len(im.getbands())
                if im.format == "PNG":
                    im.verify()  # reads every chunk and checks its CRC: truncation fails here, without decoding
                else:
                    im.load()  # decodes the pixels: a truncated or corrupt file fails here
                    if im.mode.startswith("F"):  # float TIFFs are the only 2D images that can hold NaN
                        _check_finite(np.asarray(im))
                return _Info(shape, shape, channels=channels)
        except Exception as err:
            raise _Unreadable(f"cannot be read as an image ({_one_line(err)})") from None
    if kind == "nifti":
        img = _load_nifti(path)
        expected = _nifti_expected_bytes(img)
        if path.lower().endswith(".gz"):
            _check_gzip_complete(path, expected)
        else:
            size = os.path.getsize(path)
            if size < expected:
                raise _Unreadable(f"is truncated: {size} of {expected} bytes")
        if np.dtype(img.get_data_dtype()).kind == "f":  # integer voxels cannot be NaN: only floats are decoded
            try:
                array = np.asanyarray(img.dataobj)
            except Exception as err:
                raise _Unreadable(f"is truncated or corrupt ({_one_line(err)})") from None
            _check_finite(array)
        return _nifti_info(img)
    if kind in ("dicom", "dicom_dir"):
        _read_dicom(path)
    return _Info()


def _read_with_itk(path: str) -> None:
    from monai.data import ITKReader

    reader = ITKReader()
    try:
        reader.get_data(reader.read(path))  # the pixels and the metadata, as LoadImage reads them
    except Exception as err:
        suffix = os.path.splitext(path)[1].lower()
        raise _Unreadable(
            f"cannot be read by ITK, the reader MONAI's LoadImage picks for {suffix} files ({_one_line(err)}); "
            "set image_reader to PILReader to read it with PIL"
        ) from None


def _check_finite(array: np.ndarray) -> None:
    """Raise :class:`_Unreadable` when a float array holds NaN or infinite values (counted in the message)."""
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise _Unreadable(f"holds {bad} NaN or infinite voxel values")


def _nifti_info(img: Any) -> _Info:
    return _Info(_nifti_spatial(img.shape), tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float))


def _read_label(path: str) -> tuple[_Info, np.ndarray | None]:
    """Read a label file: its shapes and affine, and its voxel array (``None`` for DICOM and unknown formats)."""
    _check_not_empty(path)
    kind = _format(path)  # an "unknown" one falls through to _spatial_shape, which refuses it
    if kind == "pil":
        from PIL import Image

        try:
            with Image.open(path) as im:
                array = np.asarray(im)  # palette images give their indices, like MONAI's PILReader
                shape = (im.height, im.width)
                return _Info(shape, shape, channels=len(im.getbands())), array
        except Exception as err:
            raise _Unreadable(f"cannot be read as an image ({_one_line(err)})") from None
    if kind == "nifti":
        img = _load_nifti(path)
        try:
            array = np.asanyarray(img.dataobj)  # decompresses everything: truncation fails here
        except Exception as err:
            raise _Unreadable(f"is truncated or corrupt ({_one_line(err)})") from None
        _check_finite(array)
        return _nifti_info(img), array
    return _spatial_shape(path), None


def _unexpected_values(array: np.ndarray, allowed: Sequence[int]) -> list[Any]:
    """The sorted values of ``array`` that are not in ``allowed`` (empty when the label is valid)."""
    if len(allowed) <= 16:  # one comparison per class is several times faster than np.isin
        ok = np.zeros_like(array, dtype=bool)  # same memory order as the array (NIfTI data is Fortran-ordered)
        for value in allowed:
            ok |= array == value
        bad_mask = ~ok
    else:
        bad_mask = ~np.isin(array, np.asarray(list(allowed)))
    if not bad_mask.any():
        return []
    values = np.unique(array[bad_mask])
    return [v.item() for v in values]


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _strip_singletons(shape: tuple[int, ...], keep: int) -> tuple[int, ...]:
    """``shape`` without its trailing singleton dims past the first ``keep`` ones."""
    while len(shape) > keep and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal spatial shapes, ignoring trailing singleton dims past the second one ((64, 64, 1) == (64, 64))."""
    return _strip_singletons(a, 2) == _strip_singletons(b, 2)


def _fmt_vector(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _affine_difference(affine: np.ndarray, reference: np.ndarray, tol: float) -> str | None:
    """``None`` when the two affines agree within ``tol`` (mm), else a short description of the difference."""
    if affine.shape == reference.shape and np.allclose(affine, reference, rtol=0.0, atol=tol):
        return None
    if affine.shape != reference.shape:
        return f"shape {affine.shape} vs {reference.shape}"
    largest = float(np.max(np.abs(affine - reference)))
    parts = [f"largest difference {largest:.4g} mm (tolerance {tol:g} mm)"]
    origin, ref_origin = affine[:3, 3], reference[:3, 3]
    if not np.allclose(origin, ref_origin, rtol=0.0, atol=tol):
        parts.append(f"origin {_fmt_vector(origin)} vs {_fmt_vector(ref_origin)}")
    spacing, ref_spacing = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(reference[:3, :3], axis=0)
    if not np.allclose(spacing, ref_spacing, rtol=0.0, atol=tol):
        parts.append(f"spacing {_fmt_vector(spacing)} vs {_fmt_vector(ref_spacing)}")
    elif not np.allclose(affine[:3, :3], reference[:3, :3], rtol=0.0, atol=tol):
        parts.append("direction differs")
    return ", ".join(parts)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ------------------------------------------------------------------------------------------------- checks


def check_datalist(
    datalist: list[dict],
    keys: Sequence[str] = ("image", "label"),
    label_key: str | None = "label",
    label_values: Sequence[int] | None = (0, 1),
    source: str = "datalist",
    *,
    spatial_dims: int | None = None,
    affine_tol: float | None = 1e-3,
    optional_keys: Sequence[str] = ("fov",),
    image_channels: int | None = None,
    min_shape: Sequence[int] | None = None,
    reader: str | None = None,
) -> list[dict]:
    """Check that every entry's files exist, can be read, agree in spatial shape and hold declared labels.

    A DICOM folder must hold one series (one SeriesInstanceUID) whose slices are evenly spaced along the
    slice normal (no missing or duplicate slices); only the headers are read.

    Args:
        datalist: entries such as ``{"image": path, "label": path}``; a value may also be a list of paths
            (a multi-channel image), whose files must agree in shape.
        keys: the keys every entry must have, each naming one or more files. Spatial shapes are compared
            with that of the first file that has one (``keys[0]`` unless it is DICOM).
        label_key: the key (one of ``keys``) whose files are read to check their values, or ``None``.
        label_values: the classes a label may hold (e.g. ``(0, 1)``, or ``(0, 255)`` for PNG masks), or
            ``None`` to skip the value check.
        source: names the datalist in messages, e.g. ``"datalist /data/dataset.json key 'training'"``.
        spatial_dims: the number of dimensions every image and label must have (2 or 3), trailing
            singleton dims not counted; e.g. ``3`` rejects a 4D NIfTI ``(X, Y, Z, T)`` with ``T > 1``
            (and a 2D image). ``None`` skips the check.
        affine_tol: the largest difference (mm) allowed between the voxel-to-world affines of an entry's
            files (NIfTI), e.g. a label and its image; ``None`` skips the check.
        optional_keys: keys checked like ``keys`` (exist, readable, same spatial shape) in the entries that have
            them, e.g. ``"fov"``, a field-of-view mask (DRIVE); other extra keys are ignored.
        image_channels: the colour channels the ``keys[0]`` files of an entry must hold together, where the format
            tells (2D images: L 1, LA 2, RGB 3, RGBA 4), e.g. ``1`` rejects an RGBA PNG fed to a one-channel network;
            label files must always hold one channel. ``None`` skips the image check.
        min_shape: the smallest spatial size of the ``keys[0]`` files, compared on the leading ``len(min_shape)``
            dims, e.g. the training ``patch_size`` when no transform pads the image up to it. ``None`` skips it.
        reader: the ``reader`` of the pipeline's ``LoadImaged`` (``"PILReader"``, ...), or ``None`` when MONAI picks
            one by suffix; then TIFF and GIF files, which it reads with ITK, are also read with ITK here.

    Returns:
        ``datalist`` itself, unchanged.

    Raises:
        DataError: one line naming ``source``, the entry index and the file at fault.
    """
    keys = list(keys)
    if label_key is not None and label_key not in keys:
        raise ConfigKeyError(f"check_datalist label_key '{label_key}' is not one of keys {keys}")
    if not isinstance(datalist, Sequence) or isinstance(datalist, (str, bytes)):
        raise DataError(f"{source} must be a list of entries, not {type(datalist).__name__}")
    if len(datalist) == 0:
        raise DataError(f"{source} is empty")
    allowed = sorted(label_values) if label_values is not None else None
    # Files shared by entries (one image with several labels) are read once.
    infos: dict[str, _Info] = {}
    label_checked: set[str] = set()
    itk_checked: set[str] = set()

    for index, entry in enumerate(datalist):
        where = f"{source} entry {index}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} must be a dict of file paths, not {type(entry).__name__}")
        missing = [k for k in keys if k not in entry]
        if missing:
            have = ", ".join(map(str, entry)) or "none"
            raise DataError(f"{where} has no key '{missing[0]}' (keys: {have})")

        reference: tuple[str, str, _Info] | None = None  # (key, file, info) of the first file with a shape
        for key in keys + [k for k in optional_keys if k in entry and k not in keys]:
            value = entry[key]
            paths = value if isinstance(value, (list, tuple)) else [value]
            if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
                raise DataError(f"{where} key '{key}' must be a file path or a list of paths, not {value!r:.80}")
            for raw in paths:
                path = os.fspath(raw)
                what = f"{where}: {key} {path}"
                if not os.path.exists(path):
                    raise DataError(f"{what} does not exist")
                try:
                    if key == label_key and allowed is not None:
                        if path not in label_checked:
                            info, array = _read_label(path)
                            if array is not None:
                                bad = _unexpected_values(array, allowed)
                                if bad:
                                    listed = ", ".join(_fmt_value(v) for v in bad[:_MAX_LISTED])
                                    more = f", ... ({len(bad)} in all)" if len(bad) > _MAX_LISTED else ""
                                    raise DataError(
                                        f"{what} has values {{{listed}{more}}} outside the declared classes "
                                        f"[{', '.join(_fmt_value(v) for v in allowed)}]"
                                    )
                            infos[path] = info
                            label_checked.add(path)
                    elif path not in infos:
                        infos[path] = _spatial_shape(path)
                    if reader is None and path.lower().endswith(_ITK_2D_SUFFIXES) and path not in itk_checked:
                        _read_with_itk(path)
                        itk_checked.add(path)
                except _Unreadable as err:
                    raise DataError(f"{what} {err}") from None
                except OSError as err:  # e.g. permission denied, a folder where a file was expected
                    raise DataError(f"{what} cannot be read ({_one_line(err)})") from None
                info = infos[path]
                if key == label_key and info.channels not in (None, 1):
                    raise DataError(f"{what} has {info.channels} channels; a label must hold one channel of classes")
                if key == keys[0] and min_shape is not None and info.shape is not None:
                    # leading dims only: a 2D patch over an (X, Y, C) NIfTI (LVSD300's 2.5D slabs) skips C
                    pairs = zip(info.shape, min_shape, strict=False)
                    small = [d for d, (have, need) in enumerate(pairs) if have < need]
                    if small:
                        raise DataError(
                            f"{what} has spatial shape {_fmt_shape(info.shape)}, smaller than the training patch "
                            f"{_fmt_shape(tuple(min_shape))} in dim {small[0]}: lower patch_size or use larger images"
                        )
                if spatial_dims is not None and info.full_shape is not None:
                    dims = _strip_singletons(info.full_shape, spatial_dims)
                    if len(dims) != spatial_dims:
                        raise DataError(
                            f"{what} has {len(dims)} dimensions {_fmt_shape(info.full_shape)} where {spatial_dims} "
                            "spatial dimensions are expected"
                        )
                if info.shape is None:
                    continue
                if reference is None:
                    reference = (key, path, info)
                    continue
                ref_key, ref_path, ref_info = reference
                assert ref_info.shape is not None
                if not _same_shape(ref_info.shape, info.shape):
                    raise DataError(
                        f"{what} has spatial shape {_fmt_shape(info.shape)} but {ref_key} {ref_path} "
                        f"has {_fmt_shape(ref_info.shape)}"
                    )
                if affine_tol is not None and info.affine is not None and ref_info.affine is not None:
                    problem = _affine_difference(info.affine, ref_info.affine, affine_tol)
                    if problem:
                        raise DataError(f"{what} has a different affine than {ref_key} {ref_path}: {problem}")
            if key == keys[0] and image_channels is not None:
                counts = [infos[os.fspath(p)].channels for p in paths]
                if None not in counts and sum(counts) != image_channels:
                    split = f" ({' + '.join(map(str, counts))} over its files)" if len(counts) > 1 else ""
                    raise DataError(
                        f"{where}: {key} {os.fspath(paths[0])} has {sum(counts)} channels{split} where "
                        f"{image_channels} are expected (image_channels, which defaults to in_channels)"
                    )
    return datalist


def count_outside(datalist: Sequence[dict], folder: str | os.PathLike, keys: Sequence[str] = ("image", "label")) -> int:
    """Log, and return, how many datalist entries name a file outside ``folder`` (the configured ``dataset_dir``).

    Datalists may point anywhere (real-data overlays read ``../shared/data`` in place, MSD datalists often hold
    absolute paths), so this is not an error; the pre-flight summary says it, so that a user sees where data is read.
    """
    root = Path(folder).resolve()
    outside = 0
    for entry in datalist:
        paths = [entry[k] for k in keys if isinstance(entry, dict) and isinstance(entry.get(k), (str, os.PathLike))]
        if any(not Path(p).resolve().is_relative_to(root) for p in paths):
            outside += 1
    logger.info(f"pre-flight: {len(datalist)} entries checked, {outside} of them read from outside {root}")
    return outside
