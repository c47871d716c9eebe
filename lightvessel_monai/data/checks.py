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
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightvessel_monai.errors import ConfigKeyError, DataError

__all__ = ["load_datalist", "check_datalist"]

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_MAX_LISTED = 5  # unexpected label values listed in a message
_GZIP_CHUNK = 1 << 24


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
    return "other"


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
        return nib.load(path)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError, ValueError...
        raise _Unreadable(f"cannot be read as NIfTI ({_one_line(err)})") from None


def _nifti_spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """The first 3 dims are spatial; further dims (channels, a trailing singleton, time) are not."""
    return tuple(int(s) for s in shape[:3])


def _read_dicom(path: str) -> None:
    import pydicom

    if os.path.isdir(path):
        files = sorted(e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
        if not files:
            raise _Unreadable("is an empty folder (expected DICOM files)")
        first = files[0]
    else:
        first = path
    try:
        pydicom.dcmread(first, stop_before_pixels=True)
    except Exception as err:
        raise _Unreadable(f"cannot be read as DICOM ({os.path.basename(first)}: {_one_line(err)})") from None


def _spatial_shape(path: str) -> tuple[int, ...] | None:
    """Open ``path``, check that it is complete, and return its spatial shape.

    2D images give ``(H, W)`` (colour channels are not spatial); NIfTI gives its first 3 dims. DICOM
    and unknown formats are only checked for readability and give ``None`` (no shape comparison).
    """
    kind = _format(path)
    if kind == "pil":
        from PIL import Image

        try:
            with Image.open(path) as im:
                shape = (im.height, im.width)
                if im.format == "PNG":
                    im.verify()  # reads every chunk and checks its CRC: truncation fails here, without decoding
                else:
                    im.load()  # decodes the pixels: a truncated or corrupt file fails here
                return shape
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
        return _nifti_spatial(img.shape)
    if kind in ("dicom", "dicom_dir"):
        _read_dicom(path)
        return None
    if os.path.getsize(path) == 0:
        raise _Unreadable("is empty")
    return None


def _read_label(path: str) -> tuple[tuple[int, ...] | None, np.ndarray | None]:
    """Read a label file: its spatial shape and voxel array (``None`` for DICOM and unknown formats)."""
    kind = _format(path)
    if kind == "pil":
        from PIL import Image

        try:
            with Image.open(path) as im:
                array = np.asarray(im)  # palette images give their indices, like MONAI's PILReader
                return (im.height, im.width), array
        except Exception as err:
            raise _Unreadable(f"cannot be read as an image ({_one_line(err)})") from None
    if kind == "nifti":
        img = _load_nifti(path)
        try:
            array = np.asanyarray(img.dataobj)  # decompresses everything: truncation fails here
        except Exception as err:
            raise _Unreadable(f"is truncated or corrupt ({_one_line(err)})") from None
        return _nifti_spatial(img.shape), array
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


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal spatial shapes, ignoring trailing singleton dims past the second one ((64, 64, 1) == (64, 64))."""

    def strip(shape: tuple[int, ...]) -> tuple[int, ...]:
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        return shape

    return strip(a) == strip(b)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ------------------------------------------------------------------------------------------------- checks


def check_datalist(
    datalist: list[dict],
    keys: Sequence[str] = ("image", "label"),
    label_key: str | None = "label",
    label_values: Sequence[int] | None = (0, 1),
    source: str = "datalist",
) -> list[dict]:
    """Check that every entry's files exist, can be read, agree in spatial shape and hold declared labels.

    Args:
        datalist: entries such as ``{"image": path, "label": path}``; a value may also be a list of paths
            (a multi-channel image), whose files must agree in shape.
        keys: the keys every entry must have, each naming one or more files. Spatial shapes are compared
            with that of the first file that has one (``keys[0]`` unless it is DICOM).
        label_key: the key (one of ``keys``) whose files are read to check their values, or ``None``.
        label_values: the classes a label may hold (e.g. ``(0, 1)``, or ``(0, 255)`` for PNG masks), or
            ``None`` to skip the value check.
        source: names the datalist in messages, e.g. ``"datalist /data/dataset.json key 'training'"``.

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
    shapes: dict[str, tuple[int, ...] | None] = {}
    label_checked: set[str] = set()

    for index, entry in enumerate(datalist):
        where = f"{source} entry {index}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} must be a dict of file paths, not {type(entry).__name__}")
        missing = [k for k in keys if k not in entry]
        if missing:
            have = ", ".join(map(str, entry)) or "none"
            raise DataError(f"{where} has no key '{missing[0]}' (keys: {have})")

        reference: tuple[str, str, tuple[int, ...]] | None = None  # (key, file, shape)
        for key in keys:
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
                            shape, array = _read_label(path)
                            if array is not None:
                                bad = _unexpected_values(array, allowed)
                                if bad:
                                    listed = ", ".join(_fmt_value(v) for v in bad[:_MAX_LISTED])
                                    more = f", ... ({len(bad)} in all)" if len(bad) > _MAX_LISTED else ""
                                    raise DataError(
                                        f"{what} has values {{{listed}{more}}} outside the declared classes "
                                        f"[{', '.join(_fmt_value(v) for v in allowed)}]"
                                    )
                            shapes[path] = shape
                            label_checked.add(path)
                    elif path not in shapes:
                        shapes[path] = _spatial_shape(path)
                except _Unreadable as err:
                    raise DataError(f"{what} {err}") from None
                except OSError as err:  # e.g. permission denied, a folder where a file was expected
                    raise DataError(f"{what} cannot be read ({_one_line(err)})") from None
                shape = shapes[path]
                if shape is None:
                    continue
                if reference is None:
                    reference = (key, path, shape)
                elif not _same_shape(reference[2], shape):
                    ref_key, ref_path, ref_shape = reference
                    raise DataError(
                        f"{where}: {key} {path} has spatial shape {_fmt_shape(shape)} but {ref_key} {ref_path} "
                        f"has {_fmt_shape(ref_shape)}"
                    )
    return datalist
