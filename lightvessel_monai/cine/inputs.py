"""Which inference inputs are images for the PNG path and which are DICOM cine runs, all checked before any output.

``inference.json`` globs ``input_glob`` and hands the matches here. In 2D (``spatial_dims`` 2) every DICOM file, told
by its content (:func:`lightvessel_monai.data.xa_dicom.is_dicom_file`, so a run without an extension is one), is a
cine run, and a folder holding DICOM files stands for those files. Each run's header is checked
(:func:`~lightvessel_monai.data.xa_dicom.check_cine`); a problem is one :class:`DataError` line naming the file. The
rest (PNG, TIFF, ... and, in 3D, DICOM series folders) goes to the existing datalist checks unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from lightvessel_monai.data._unreadable import Unreadable
from lightvessel_monai.data.xa_dicom import CineRun, check_cine, is_dicom_file
from lightvessel_monai.errors import DataError

__all__ = ["InferenceInputs", "split_inputs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceInputs:
    """``images``: paths for the datalist (the PNG path); ``runs``: checked DICOM cine runs."""

    images: list[str] = field(default_factory=list)
    runs: list[CineRun] = field(default_factory=list)


def _folder_files(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def split_inputs(paths: Sequence[str], spatial_dims: int = 2, source: str = "input_glob") -> InferenceInputs:
    """Split ``paths`` (the matches of ``source``) into images and checked cine runs.

    Raises:
        DataError: a DICOM that is not a decodable run of 2D greyscale frames, or two runs with one file name (their
            outputs are named after it), in one line naming the file.
    """
    images: list[str] = []
    candidates: list[str] = []
    for path in map(os.fspath, paths):
        if spatial_dims != 2:
            images.append(path)
        elif os.path.isdir(path):
            dicoms = [f for f in _folder_files(path) if is_dicom_file(f)]
            if dicoms:
                candidates.extend(dicoms)
            else:
                images.append(path)  # not a folder of runs: the datalist checks say what it is
        elif is_dicom_file(path):
            candidates.append(path)
        else:
            images.append(path)
    runs: list[CineRun] = []
    names: dict[str, str] = {}
    for path in candidates:
        try:
            run = check_cine(path)
        except Unreadable as err:
            raise DataError(f"input {path} {err}") from None
        if run.name in names:
            raise DataError(
                f"inputs {path} and {names[run.name]} (from {source}) have the same file name, which names their "
                "outputs: run them separately or rename one"
            )
        names[run.name] = path
        runs.append(run)
        logger.info(f"cine run {run.describe()}")
    return InferenceInputs(images, runs)
