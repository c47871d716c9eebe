"""Pre-flight readers of single image files: the format by content, completeness, shape, channels and finiteness.

Small and format-specific (Pillow for 2D images, nibabel for NIfTI, ITK where MONAI's LoadImage would use it), so
that checking a datalist costs a fraction of one epoch. Problems are raised as :class:`Unreadable`, which
:func:`lightvessel_monai.data.checks.check_datalist` turns into a one-line error naming the entry and the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightvessel_monai.data._dicom_series import read_dicom
from lightvessel_monai.data._unreadable import DICOM_SUFFIXES, Unreadable, one_line

__all__ = ["ITK_2D_SUFFIXES", "FileInfo", "read_image", "read_label", "read_with_itk"]

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# 2D suffixes that MONAI's LoadImage, left to choose its reader, reads with ITK (its PILReader claims only
# .png, .jpg, .jpeg and .bmp): pre-flight reads these with ITK too, so that it accepts what the pipeline can read
ITK_2D_SUFFIXES = (".tif", ".tiff", ".gif")
_GZIP_CHUNK = 1 << 24


@dataclass(frozen=True)
class FileInfo:
    """What the readers learn about a file: ``None`` where the format does not tell (DICOM, unknown)."""

    shape: tuple[int, ...] | None = None  # spatial shape, compared across an entry
    full_shape: tuple[int, ...] | None = None  # every dimension, for the ``spatial_dims`` check
    affine: np.ndarray | None = None  # voxel-to-world matrix (NIfTI), compared across an entry
    channels: int | None = None  # colour channels of a 2D image file (PIL bands: L 1, LA 2, RGB 3, RGBA 4)


def _format(path: str) -> str:
    lower = path.lower()
    if os.path.isdir(path):
        return "dicom_dir"
    if lower.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(_PIL_SUFFIXES):
        return "pil"
    if lower.endswith(DICOM_SUFFIXES):
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
        raise Unreadable(f"is truncated or corrupt ({one_line(err)})") from None
    if total < expected:
        raise Unreadable(f"is truncated: {total} of {expected} uncompressed bytes")


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
        raise Unreadable(f"cannot be read as NIfTI ({one_line(err)})") from None


def _nifti_spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """The first 3 dims are spatial; further dims (channels, a trailing singleton, time) are not."""
    return tuple(int(s) for s in shape[:3])


def _check_not_empty(path: str) -> None:
    if not os.path.isdir(path) and os.path.getsize(path) == 0:
        raise Unreadable("is empty (0 bytes)")


def read_image(path: str) -> FileInfo:
    """Open ``path``, check that it is complete, and return its shapes (and affine, for NIfTI).

    2D images give the spatial shape ``(H, W)`` (colour channels are not spatial); NIfTI gives its first
    3 dims as the spatial shape. DICOM and unknown formats are only checked for readability and give no
    shape (no shape comparison).
    """
    _check_not_empty(path)
    kind = _format(path)
    if kind == "unknown":
        raise Unreadable(_NOT_AN_IMAGE)
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
                return FileInfo(shape, shape, channels=channels)
        except Exception as err:
            raise Unreadable(f"cannot be read as an image ({one_line(err)})") from None
    if kind == "nifti":
        img = _load_nifti(path)
        expected = _nifti_expected_bytes(img)
        if path.lower().endswith(".gz"):
            _check_gzip_complete(path, expected)
        else:
            size = os.path.getsize(path)
            if size < expected:
                raise Unreadable(f"is truncated: {size} of {expected} bytes")
        if np.dtype(img.get_data_dtype()).kind == "f":  # integer voxels cannot be NaN: only floats are decoded
            try:
                array = np.asanyarray(img.dataobj)
            except Exception as err:
                raise Unreadable(f"is truncated or corrupt ({one_line(err)})") from None
            _check_finite(array)
        return _nifti_info(img)
    if kind in ("dicom", "dicom_dir"):
        read_dicom(path)
    return FileInfo()


def read_with_itk(path: str) -> None:
    from monai.data import ITKReader

    reader = ITKReader()
    try:
        reader.get_data(reader.read(path))  # the pixels and the metadata, as LoadImage reads them
    except Exception as err:
        suffix = os.path.splitext(path)[1].lower()
        raise Unreadable(
            f"cannot be read by ITK, the reader MONAI's LoadImage picks for {suffix} files ({one_line(err)}); "
            "set image_reader to PILReader to read it with PIL"
        ) from None


def _check_finite(array: np.ndarray) -> None:
    """Raise :class:`Unreadable` when a float array holds NaN or infinite values (counted in the message)."""
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise Unreadable(f"holds {bad} NaN or infinite voxel values")


def _nifti_info(img: Any) -> FileInfo:
    return FileInfo(_nifti_spatial(img.shape), tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float))


def read_label(path: str) -> tuple[FileInfo, np.ndarray | None]:
    """Read a label file: its shapes and affine, and its voxel array (``None`` for DICOM and unknown formats)."""
    _check_not_empty(path)
    kind = _format(path)  # an "unknown" one falls through to read_image, which refuses it
    if kind == "pil":
        from PIL import Image

        try:
            with Image.open(path) as im:
                array = np.asarray(im)  # palette images give their indices, like MONAI's PILReader
                shape = (im.height, im.width)
                return FileInfo(shape, shape, channels=len(im.getbands())), array
        except Exception as err:
            raise Unreadable(f"cannot be read as an image ({one_line(err)})") from None
    if kind == "nifti":
        img = _load_nifti(path)
        try:
            array = np.asanyarray(img.dataobj)  # decompresses everything: truncation fails here
        except Exception as err:
            raise Unreadable(f"is truncated or corrupt ({one_line(err)})") from None
        _check_finite(array)
        return _nifti_info(img), array
    return read_image(path), None
