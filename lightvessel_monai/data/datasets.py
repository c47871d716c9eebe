"""Datalists for the real datasets in ``../shared/data`` (read in place, never copied into the repository).

* :func:`totalseg_example_datalist`: the TotalSegmentator example CT (one labelled 3D volume, 3 mm isotropic, RAS,
  a multi-label map predicted by TotalSegmentator, i.e. pseudo ground truth).
* :func:`lvsd300_datalist`: the LVSD300 sample, 2.5D slabs ``(512, 512, 8)`` whose channel 0 is the vessel mask
  and channels 1..7 are CT slices; each file is both the image and the label of its entry.
* :func:`drive_datalist`: DRIVE (retinal fundus photographs, 2D), the 20 training triplets (RGB image, manual vessel
  mask, field-of-view mask) split 15/5 by their leading number: 21..35 for training, 36..40 for validation.
* :func:`xca_datalist`: the XCA coronary angiograms (2D X-ray, 300 x 300), 40 frames with artery-tree masks, split
  30/10 by number: 1..30 for training, 31..40 for validation.
* :func:`write_datalist`: write such a ``{"training": [...], "validation": [...]}`` dict as a decathlon-style JSON,
  which :func:`lightvessel_monai.data.checks.load_datalist` (the bundle's ``train#datalist``) reads.

The functions are dimension-agnostic: they only list files; the bundle's data overlays
(``configs/data/totalseg_example.json``, ``configs/data/lvsd300.json``, ``configs/data/drive.json``) do the loading
and label mapping.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from pathlib import Path

from lightvessel_monai.data._synthetic_files import write_json_atomic
from lightvessel_monai.errors import DataError
from lightvessel_monai.files import atomic_write

__all__ = [
    "DRIVE_VALIDATION_NUMBERS",
    "TOTALSEG_IMAGE",
    "TOTALSEG_LABEL",
    "drive_datalist",
    "lvsd300_datalist",
    "totalseg_example_datalist",
    "write_datalist",
    "XCA_VALIDATION_NUMBERS",
    "xca_datalist",
]

TOTALSEG_IMAGE = "example_ct_sm.nii.gz"
TOTALSEG_LABEL = "example_seg.nii.gz"
#: slices (last array axis, inferior to superior in RAS) of each half when the example volume is split along z
_TOTALSEG_HALVES = {"training": (15, 30), "validation": (0, 15)}
_LVSD_SPLITS = {"training": "train", "validation": "vali"}
_LVSD_NAME = re.compile(r"^\d+\.\d+\.nii\.gz$")
#: DRIVE images held out for validation (the last 5 of 21..40); the other 15 train
DRIVE_VALIDATION_NUMBERS = (36, 37, 38, 39, 40)
_DRIVE_IMAGE = re.compile(r"^(\d+)_training\.tif$")
#: XCA angiograms held out for validation (the last 10 of 1..40); the other 30 train
XCA_VALIDATION_NUMBERS = tuple(range(31, 41))
_XCA_IMAGE = re.compile(r"^(\d+)\.png$")


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
                # gzip with mtime 0: the same half gives the same bytes (the teacher cache hashes the files)
                atomic_write(dst, lambda f, part=part: f.write(gzip.compress(part.to_bytes(), mtime=0)))
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


def drive_datalist(root: str | os.PathLike, validation_numbers: Sequence[int] = DRIVE_VALIDATION_NUMBERS) -> dict:
    """Datalist of the DRIVE training set, split by the leading number of each file name.

    ``root/training/images/NN_training.tif`` (RGB, 565 x 584) is paired with ``training/1st_manual/NN_manual1.gif``
    (the manual vessel mask, ``{0, 255}``) and ``training/mask/NN_training_mask.gif`` (the field of view, ``{0, 255}``).
    Images numbered in ``validation_numbers`` (default 36..40) form the validation split, the others (21..35)
    the training split: a fixed 15/5 split in which no image is in both.

    Returns:
        ``{"training": [{"image": ..., "label": ..., "fov": ...}, ...], "validation": [...]}`` with absolute paths,
        in number order.

    Raises:
        DataError: the image folder is missing or empty, an image lacks its vessel or FOV mask, a validation number
            has no image, or a split would be empty.
    """
    root = Path(root).expanduser().absolute()
    images = root / "training" / "images"
    found = sorted((int(m.group(1)), p) for p in images.glob("*_training.tif") if (m := _DRIVE_IMAGE.match(p.name)))
    if not found:
        raise DataError(f"DRIVE training images not found at {images} (no NN_training.tif)")
    held_out = {int(n) for n in validation_numbers}
    absent = sorted(held_out - {n for n, _ in found})
    if absent:
        raise DataError(f"DRIVE validation image {absent[0]:02d}_training.tif not found at {images}")
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for number, image in found:
        entry = {
            "image": str(image),
            "label": str(root / "training" / "1st_manual" / f"{number:02d}_manual1.gif"),
            "fov": str(root / "training" / "mask" / f"{number:02d}_training_mask.gif"),
        }
        for kind in ("label", "fov"):
            if not Path(entry[kind]).is_file():
                what = "vessel mask" if kind == "label" else "field-of-view mask"
                raise DataError(f"DRIVE {what} of {image.name} not found: {entry[kind]}")
        datalist["validation" if number in held_out else "training"].append(entry)
    if not datalist["training"]:
        raise DataError(f"DRIVE at {root}: every image is in validation_numbers, none is left for training")
    return datalist


def xca_datalist(root: str | os.PathLike, validation_numbers: Sequence[int] = XCA_VALIDATION_NUMBERS) -> dict:
    """Datalist of the XCA coronary angiograms, split by the number in each file name.

    ``root/training/N.png`` (an 8-bit grey X-ray angiogram, 300 x 300) is paired with ``root/training/N_gt.png``
    (its artery-tree mask, ``{0, 255}`` but for a few anti-aliased pixels, which the overlay thresholds at 127).
    Frames numbered in ``validation_numbers`` (default 31..40) form the validation split, the others (1..30) the
    training split. The data set has no field-of-view mask: it is scored over the whole image.

    Returns:
        ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...]}`` with absolute paths, in number order.

    Raises:
        DataError: the folder is missing or holds no ``N.png``, an angiogram lacks its mask, a validation number has
            no angiogram, or a split would be empty.
    """
    root = Path(root).expanduser().absolute()
    folder = root / "training"
    found = sorted((int(m.group(1)), p) for p in folder.glob("*.png") if (m := _XCA_IMAGE.match(p.name)))
    if not found:
        raise DataError(f"XCA coronary angiograms not found at {folder} (no N.png)")
    held_out = {int(n) for n in validation_numbers}
    absent = sorted(held_out - {n for n, _ in found})
    if absent:
        raise DataError(f"XCA validation angiogram {absent[0]}.png not found at {folder}")
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for number, image in found:
        label = folder / f"{number}_gt.png"
        if not label.is_file():
            raise DataError(f"XCA vessel mask of {image.name} not found: {label}")
        datalist["validation" if number in held_out else "training"].append({"image": str(image), "label": str(label)})
    if not datalist["training"]:
        raise DataError(f"XCA at {root}: every angiogram is in validation_numbers, none is left for training")
    return datalist


def label_scarce(datalist: dict, labelled: int) -> dict:
    """The same datalist with only the first ``labelled`` training entries annotated: the others move, image only,
    to its ``"unlabeled"`` list (after any it already has). Validation is unchanged. The clinic that annotates ten
    frames: ``label_scarce(xca_datalist(root), 10)``.
    """
    training = list(datalist.get("training", []))
    if not 1 <= int(labelled) <= len(training):
        raise DataError(
            f"label_scarce: labelled must be between 1 and {len(training)} training entries, got {labelled}"
        )
    scarce = dict(datalist)
    scarce["training"] = training[: int(labelled)]
    scarce["unlabeled"] = list(datalist.get("unlabeled", [])) + [
        {"image": e["image"]} for e in training[int(labelled) :]
    ]
    return scarce


def write_datalist(datalist: dict, path: str | os.PathLike) -> str:
    """Write ``datalist`` as JSON to ``path`` (atomically, creating its folder) and return the path as a string."""
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, datalist)
    return str(path)
