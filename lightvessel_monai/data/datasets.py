"""Datalists for the real datasets in ``../shared/data`` (read in place, never copied into the repository).

* :func:`totalseg_example_datalist`: the TotalSegmentator example CT (one labelled 3D volume, 3 mm isotropic, RAS,
  a multi-label map predicted by TotalSegmentator, i.e. pseudo ground truth).
* :func:`lvsd300_datalist`: the LVSD300 sample, 2.5D slabs ``(512, 512, 8)`` whose channel 0 is the vessel mask
  and channels 1..7 are CT slices; each file is both the image and the label of its entry.
* :func:`write_datalist`: write such a ``{"training": [...], "validation": [...]}`` dict as a decathlon-style JSON,
  which :func:`lightvessel_monai.data.checks.load_datalist` (the bundle's ``train#datalist``) reads.

The functions are dimension-agnostic: they only list files; the bundle's data overlays
(``configs/data/totalseg_example.json``, ``configs/data/lvsd300.json``) do the loading and label mapping.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lightvessel_monai.data._cache import write_json_atomic
from lightvessel_monai.errors import DataError

__all__ = ["TOTALSEG_IMAGE", "TOTALSEG_LABEL", "lvsd300_datalist", "totalseg_example_datalist", "write_datalist"]

TOTALSEG_IMAGE = "example_ct_sm.nii.gz"
TOTALSEG_LABEL = "example_seg.nii.gz"
#: slices (last array axis, inferior to superior in RAS) of each half when the example volume is split along z
_TOTALSEG_HALVES = {"training": (15, 30), "validation": (0, 15)}
_LVSD_SPLITS = {"training": "train", "validation": "vali"}
_LVSD_NAME = re.compile(r"^\d+\.\d+\.nii\.gz$")


def _require_files(root: Path, names: list[str], what: str) -> None:
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{what} not found at {root} (missing {', '.join(missing)})")


def totalseg_example_datalist(root: str | os.PathLike, split_dir: str | os.PathLike | None = None) -> dict:
    """Datalist of the TotalSegmentator example CT ``example_ct_sm.nii.gz`` with its label map ``example_seg.nii.gz``.

    Only one labelled volume exists. Without ``split_dir`` the same volume is both the training and the
    validation entry (a smoke test, not a measure of generalisation). With ``split_dir`` the volume is split along z
    (its last, inferior-superior axis): the superior half (slices 15..29) is written there as the training
    pair, the inferior half (slices 0..14) as the validation pair, each with its own correct affine (nibabel
    slicing); the files are rewritten only when missing. The halves are disjoint, but they come from one patient.

    Returns:
        ``{"training": [{"image": ..., "label": ...}], "validation": [...]}`` with absolute paths.

    Raises:
        DataError: the folder or one of the two files is missing.
    """
    root = Path(root).expanduser().absolute()
    _require_files(root, [TOTALSEG_IMAGE, TOTALSEG_LABEL], "TotalSegmentator example")
    image, label = str(root / TOTALSEG_IMAGE), str(root / TOTALSEG_LABEL)
    if split_dir is None:
        entry = {"image": image, "label": label}
        return {"training": [dict(entry)], "validation": [dict(entry)]}

    import nibabel as nib

    out = Path(split_dir).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict[str, str]]] = {}
    sources: dict[str, nib.Nifti1Image] = {}
    for key, (start, stop) in _TOTALSEG_HALVES.items():
        entry = {}
        for kind, src in (("image", image), ("label", label)):
            dst = out / f"{kind}_z{start:03d}-{stop:03d}.nii.gz"
            if not dst.is_file():
                if src not in sources:
                    sources[src] = nib.load(src)
                part = sources[src].slicer[:, :, start:stop]
                tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.nii.gz")
                nib.save(part, tmp)
                os.replace(tmp, dst)
            entry[kind] = str(dst)
        datalist[key] = [entry]
    return datalist


def lvsd300_datalist(root: str | os.PathLike, num_train: int | None = None, num_val: int | None = None) -> dict:
    """Datalist of the LVSD300 sample: ``train/*.nii.gz`` for training and ``vali/*.nii.gz`` for validation.

    The two folders hold different studies (file names ``<study id>.<slice>.nii.gz``), so the given split
    has no leakage between studies. Each file is both ``image`` and ``label`` (channel 0 is the mask).
    ``num_train`` / ``num_val`` keep only the first files of each split in name order (``None``: all), for quick runs.

    Raises:
        DataError: the folder, a split folder, or the files in it are missing.
    """
    root = Path(root).expanduser().absolute()
    datalist: dict[str, list[dict[str, str]]] = {}
    limits = {"training": num_train, "validation": num_val}
    for key, folder in _LVSD_SPLITS.items():
        files = sorted(p for p in (root / folder).glob("*.nii.gz") if _LVSD_NAME.match(p.name))
        if not files:
            raise DataError(f"LVSD300 liver-vessel slices not found at {root} (no {folder}/*.nii.gz)")
        if limits[key] is not None:
            if limits[key] < 1:
                raise DataError(f"LVSD300 {key} count must be at least 1, not {limits[key]}")
            files = files[: limits[key]]
        datalist[key] = [{"image": str(p), "label": str(p)} for p in files]
    return datalist


def write_datalist(datalist: dict, path: str | os.PathLike) -> str:
    """Write ``datalist`` as JSON to ``path`` (atomically, creating its folder) and return the path as a string."""
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, datalist)
    return str(path)
