"""Multi-frame X-ray angiography DICOM: recognise a cine run by its content, check it, decode its frames.

A cath-lab system writes each acquisition (a *run*) as one multi-frame DICOM file (X-Ray Angiographic Image Storage,
or X-Ray Radiofluoroscopic Image Storage): ``NumberOfFrames`` greyscale frames of ``Rows x Columns`` pixels, 8 to 30
a second (``CineRate``, ``FrameTime``), often JPEG Lossless compressed, and usually without a file extension.

* :func:`is_dicom_file` tells a DICOM file by its content (the ``DICM`` marker after the 128-byte preamble), or by a
  ``.dcm``/``.dicom`` suffix.
* :func:`check_cine` reads the file once (pydicom) and refuses, with one line naming what is wrong, a DICOM that holds
  no image (a structured report), pixel data cut short, a transfer syntax that no installed pydicom plugin decodes
  (naming the plugin to install), and frames that are not 2D greyscale. It decodes nothing.
* :func:`read_frames` decodes the frames through pydicom's pixel-data plugins (pylibjpeg-libjpeg for JPEG Lossless and
  JPEG-LS, pyjpegls, Pillow for JPEG baseline and JPEG 2000; RLE and native data need none): ``(T, H, W)`` in
  MONOCHROME2 sense (a MONOCHROME1 run is inverted, so vessels are dark as in the training angiograms).
* :func:`shutter_inside` reads the Display Shutter module (rectangular, circular, polygonal): the collimated field
  that the system itself recorded.
* :func:`decodable_transfer_syntaxes` lists what this environment decodes (for the README and error messages).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightvessel_monai.data._unreadable import DICOM_SUFFIXES, Unreadable, one_line
from lightvessel_monai.errors import DataError

__all__ = [
    "CineRun",
    "check_cine",
    "decodable_transfer_syntaxes",
    "frame_rate",
    "is_dicom_file",
    "read_frames",
    "shutter_inside",
]

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_EOF_WARNING = "End of file reached"  # pydicom's warning when an undefined-length element has no delimiter


@dataclass(frozen=True)
class CineRun:
    """What :func:`check_cine` learnt from the header of one run (no pixel data)."""

    path: str
    name: str  # the file name: the stem of every output of the run
    sop_instance_uid: str
    sop_class: str  # its name, e.g. "X-Ray Angiographic Image Storage"
    frames: int
    rows: int
    columns: int
    bits_stored: int
    transfer_syntax: str  # its name
    frame_rate: float | None  # frames per second of the acquisition (CineRate, else 1000 / FrameTime)

    def describe(self) -> str:
        rate = f", {self.frame_rate:g} fps" if self.frame_rate else ""
        return f"{self.name}: {self.frames} frames of {self.rows}x{self.columns}, {self.transfer_syntax}{rate}"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A regular file with the ``DICM`` marker at byte 128, or a ``.dcm``/``.dicom`` name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def frame_rate(ds: Any) -> float | None:
    """The acquisition's frames per second: ``CineRate``, else ``1000 / FrameTime`` (ms), else the recommended
    display rate; ``None`` when the header gives none."""
    for keyword, convert in (
        ("CineRate", float),
        ("FrameTime", lambda ms: 1000.0 / float(ms)),
        ("RecommendedDisplayFrameRate", float),
    ):
        value = ds.get(keyword)
        try:
            rate = convert(value) if value not in (None, "") else None
        except (TypeError, ValueError, ZeroDivisionError):
            rate = None
        if rate is not None and rate > 0 and np.isfinite(rate):
            return rate
    return None


def _plugin_hint(decoder: Any) -> str:
    """``pip install`` lines from pydicom's ``missing_dependencies`` ("plugin - requires a and b"), one per plugin."""
    lines = []
    for missing in decoder.missing_dependencies:
        needs = str(missing).split(" - requires ", 1)[-1].split(" and ")
        lines.append("pip install " + " ".join(f"'{n.strip()}'" for n in needs))
    return " (or) ".join(lines) or "install a pydicom pixel-data plugin for it"


def _check_decodable(ds: Any) -> None:
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None:
        raise Unreadable("cannot be read as DICOM (its file meta information has no TransferSyntaxUID)")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise Unreadable(
            f"has pixel data in transfer syntax {uid.name} ({uid}), which pydicom cannot decode with any plugin: "
            "convert the run to a decodable syntax (e.g. JPEG Lossless or uncompressed) first"
        ) from None
    if not decoder.is_available:
        raise Unreadable(
            f"has pixel data in transfer syntax {uid.name} ({uid}), which no installed pydicom plugin decodes: "
            f"{_plugin_hint(decoder)}"
        )


def _check_complete(ds: Any, frames: int, ended_early: bool) -> None:
    from pydicom import encaps

    uid = ds.file_meta.TransferSyntaxUID
    data = ds.PixelData
    if not uid.is_encapsulated:
        samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        expected = (int(ds.Rows) * int(ds.Columns) * frames * samples * bits + 7) // 8
        if len(data) < expected:
            raise Unreadable(f"is truncated: {len(data)} of the {expected} bytes of its pixel data ({frames} frames)")
        return
    try:
        found = sum(1 for _ in encaps.generate_frames(data, number_of_frames=frames))
    except Exception as err:  # a fragment or item tag cut short
        raise Unreadable(
            f"is truncated or corrupt: its encapsulated pixel data cannot be parsed ({one_line(err)})"
        ) from None
    if found < frames:
        raise Unreadable(f"is truncated: its encapsulated pixel data holds {found} of its {frames} frames")
    if ended_early:
        raise Unreadable("is truncated: the file ends before the end of its pixel data")


def check_cine(path: str | os.PathLike) -> CineRun:
    """Read the header (and the raw pixel bytes, undecoded) of one DICOM file and check that it is a run of 2D
    greyscale frames that can be decoded here.

    Raises:
        Unreadable: one line saying what is wrong (the caller adds the file's name).
    """
    import pydicom

    path = os.fspath(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:
            raise Unreadable(f"cannot be read as DICOM ({one_line(err)})") from None
    ended_early = any(_EOF_WARNING in str(w.message) for w in caught)
    sop = ds.get("SOPClassUID")
    sop_name = sop.name if sop is not None else "object without a SOPClassUID"
    try:
        if "PixelData" not in ds:
            if ended_early:
                raise Unreadable("is truncated: the file ends inside its pixel data (the data's delimiter is missing)")
            modality = ds.get("Modality", "unknown")
            raise Unreadable(f"is a DICOM {sop_name} (Modality {modality}), not an image: it holds no pixel data")
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, photometric = int(ds.get("SamplesPerPixel", 1)), str(ds.get("PhotometricInterpretation", ""))
        if samples != 1 or photometric not in GREYSCALE:
            raise Unreadable(
                f"has {frames} frames of {samples}-sample {photometric or 'unspecified'} pixels; the network reads "
                f"2D greyscale frames ({' or '.join(GREYSCALE)}, SamplesPerPixel 1)"
            )
        if frames < 1 or rows < 1 or columns < 1:
            raise Unreadable(f"has {frames} frames of {rows}x{columns} pixels")
        _check_decodable(ds)
        _check_complete(ds, frames, ended_early)
        return CineRun(
            path=path,
            name=os.path.basename(path),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class=sop_name,
            frames=frames,
            rows=rows,
            columns=columns,
            bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
            transfer_syntax=ds.file_meta.TransferSyntaxUID.name,
            frame_rate=frame_rate(ds),
        )
    except Unreadable:
        raise
    except Exception as err:  # pydicom parses values lazily: a corrupt one fails when first read
        raise Unreadable(f"holds a DICOM header value that cannot be read ({one_line(err)})") from None


def read_frames(run: CineRun) -> tuple[Any, np.ndarray]:
    """Decode every frame of ``run``.

    Returns:
        ``(header, frames)``: the pydicom dataset without its pixel data (for the DICOM SEG), and the frames
        ``(T, H, W)`` in the stored dtype (uint8 for 8-bit runs), MONOCHROME2 sense (higher is brighter).

    Raises:
        DataError: the pixel data does not decode (a corrupt compressed frame), naming the file.
    """
    import pydicom

    ds = pydicom.dcmread(run.path)
    try:
        frames = np.asarray(ds.pixel_array).reshape(run.frames, run.rows, run.columns)
    except Exception as err:
        raise DataError(f"input {run.path} cannot be decoded ({one_line(err)})") from None
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":  # lowest value is white: turn it into MONOCHROME2
        frames = (2**run.bits_stored - 1) - frames
    del ds.PixelData
    return ds, frames


def _edge(ds: Any, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    return int(value) if value not in (None, "") else default


def shutter_inside(ds: Any, shape: Sequence[int]) -> np.ndarray | None:
    """The pixels that the Display Shutter module (DICOM C.7.6.11) leaves open, ``(rows, columns)`` bool.

    ``ShutterShape`` may combine RECTANGULAR (edges given as 1-based columns and rows), CIRCULAR (centre as
    row\\column, radius in pixels) and POLYGONAL (vertices as row\\column pairs); the open field is inside all of
    them. ``None`` when the header has no shutter (or a shape this reader does not know).
    """
    raw = ds.get("ShutterShape")
    if not raw:
        return None
    shapes = [str(s).upper() for s in ([raw] if isinstance(raw, str) else raw)]  # CS, one value or several
    rows, columns = int(shape[0]), int(shape[1])
    r, c = np.ogrid[:rows, :columns]
    inside = np.ones((rows, columns), dtype=bool)
    known = False
    try:
        if "RECTANGULAR" in shapes:
            left = _edge(ds, "ShutterLeftVerticalEdge", 1) - 1
            right = _edge(ds, "ShutterRightVerticalEdge", columns) - 1
            upper = _edge(ds, "ShutterUpperHorizontalEdge", 1) - 1
            lower = _edge(ds, "ShutterLowerHorizontalEdge", rows) - 1
            inside &= (c >= left) & (c <= right) & (r >= upper) & (r <= lower)
            known = True
        if "CIRCULAR" in shapes and "CenterOfCircularShutter" in ds and "RadiusOfCircularShutter" in ds:
            cy, cx = (float(v) - 1 for v in ds.CenterOfCircularShutter)
            inside &= (r - cy) ** 2 + (c - cx) ** 2 <= float(ds.RadiusOfCircularShutter) ** 2
            known = True
        if "POLYGONAL" in shapes and "VerticesOfThePolygonalShutter" in ds:
            from skimage.draw import polygon

            vertices = np.asarray([float(v) - 1 for v in ds.VerticesOfThePolygonalShutter]).reshape(-1, 2)
            polygonal = np.zeros((rows, columns), dtype=bool)
            polygonal[polygon(vertices[:, 0], vertices[:, 1], (rows, columns))] = True
            inside &= polygonal
            known = True
    except (TypeError, ValueError):
        return None  # a malformed shutter is ignored: the field is then found from the pixels alone
    return inside if known else None


def decodable_transfer_syntaxes() -> list[tuple[str, str, list[str]]]:
    """``(uid, name, plugins)`` of every transfer syntax whose pixel data pydicom decodes in this environment."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS, get_decoder

    out = []
    for uid in sorted(_PIXEL_DATA_DECODERS, key=str):
        decoder = get_decoder(uid)
        if decoder.is_available:
            out.append((str(uid), uid.name, sorted(decoder.available_plugins) or ["pydicom (native)"]))
    return out
