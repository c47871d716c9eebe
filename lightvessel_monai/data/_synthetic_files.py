"""Helpers shared by the synthetic dataset generators: per-item seeds, cache validation, atomic datalist write."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock

from lightvessel_monai.errors import DataError
from lightvessel_monai.files import atomic_write_text

__all__ = [
    "MARKER",
    "cache_valid",
    "claim_folder",
    "derived_seed",
    "prepare_dataset_dirs",
    "write_json_atomic",
    "write_synthetic_dataset",
]

logger = logging.getLogger(__name__)

#: Written into every folder a generator fills; a folder without it is never written into unless it is empty.
MARKER = ".lightvessel_synthetic"


def derived_seed(seed: int, index: int) -> int:
    """Independent per-item seed from (dataset seed, item index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def cache_valid(datalist_path: Path, generator: dict) -> bool:
    """True when an existing datalist was written by the same generator parameters and all its files exist."""
    try:
        data = json.loads(datalist_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("generator") != generator:
        return False
    root = datalist_path.parent
    try:
        items = [item for key in ("training", "validation") for item in data[key]]
        return all((root / item[k]).is_file() for item in items for k in ("image", "label"))
    except (KeyError, TypeError):  # hand-edited or foreign datalist: regenerate
        return False


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`lightvessel_monai.files.atomic_write_text`).

    Readers see either the old file, no file, or the complete new one, never a partial write.
    """
    atomic_write_text(path, json.dumps(data, indent=2))


def _is_legacy_cache(root: Path, dataset_name: str) -> bool:
    """A cache written before the marker existed: our own ``dataset.json`` (its name and generator block)."""
    try:
        data = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("name") == dataset_name and isinstance(data.get("generator"), dict)


def _foreign_entry(root: Path, file_re: re.Pattern, ours: bool) -> Path | None:
    """The first entry of ``root`` that a generator with file names ``file_re`` would not have written, if any.

    ``dataset.json`` is the generator's own only in a folder that is ``ours`` (marked, or a cache of ours).
    """
    for entry in sorted(root.iterdir()):
        if entry.name in ("imagesTr", "labelsTr") and entry.is_dir():
            inside = [item for item in sorted(entry.iterdir()) if not (item.is_file() and file_re.match(item.name))]
            if inside:
                return inside[0]
            continue
        own_file = (
            entry.name == MARKER
            or (entry.name == "dataset.json" and ours)
            or (
                entry.name.startswith(".dataset.") and entry.name.endswith(".tmp")  # a killed write_json_atomic
            )
        )
        if not (own_file and entry.is_file()):
            return entry
    return None


def claim_folder(root: Path, file_re: re.Pattern, dataset_name: str) -> None:
    """Make sure ``root`` is ours to write into, then mark it; a one-line :class:`DataError` otherwise.

    A generator deletes and overwrites files in its folder, so it must never do so in a user's dataset (say, an MSD
    folder passed as ``--dataset_dir`` by mistake). It writes only into a folder that is missing, empty, or already
    holds its marker (or a cache from before the marker), and only if that folder holds nothing but its own files.
    """
    if root.exists() and not root.is_dir():
        raise DataError(f"dataset_dir {root} is not a folder; the synthetic data generator needs a folder of its own")
    if root.is_dir():
        ours = (root / MARKER).is_file() or _is_legacy_cache(root, dataset_name)
        foreign = _foreign_entry(root, file_re, ours)
        if foreign is not None or (not ours and any(root.iterdir())):
            what = f"holds {foreign.relative_to(root)}, which" if foreign is not None else "is not empty and"
            raise DataError(
                f"dataset_dir {root} {what} the synthetic data generator did not write; it writes only into an empty "
                f"folder or its own cache (marked by {MARKER}), so nothing there was changed. For your own data, "
                "use a data overlay (e.g. configs/data/ct3d.json); for synthetic data, an empty --dataset_dir"
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"generator": dataset_name}) + "\n")


def prepare_dataset_dirs(root: Path, names: list[str], file_re: re.Pattern, dataset_name: str) -> tuple[Path, Path]:
    """Claim ``root`` (:func:`claim_folder`), create ``imagesTr``/``labelsTr``, invalidate the old datalist and drop
    our stale files not in ``names``.

    The datalist goes first: from here on the folder holds a mix of old and new files, and a killed
    generation must not look like a valid cache.
    """
    claim_folder(root, file_re, dataset_name)
    img_dir, lbl_dir = root / "imagesTr", root / "labelsTr"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").unlink(missing_ok=True)
    keep = set(names)
    for folder in (img_dir, lbl_dir):  # our own files left over from a larger previous dataset
        for stale in folder.iterdir():
            if file_re.match(stale.name) and stale.name not in keep:
                stale.unlink()
    return img_dir, lbl_dir


def write_synthetic_dataset(
    output_dir: str | os.PathLike,
    generator: dict,
    names: list[str],
    file_re: re.Pattern,
    info: dict,
    write_pair: Callable[[int, Path, Path], None],
    what: str,
    log: logging.Logger = logger,
) -> str:
    """Fill ``output_dir`` with generated image/label pairs and their MSD-style ``dataset.json``, or reuse them.

    ``generator`` (with ``num_train`` and ``num_val``) keys the cache: when ``dataset.json`` holds the same one and
    every file exists, nothing is written. Otherwise ``write_pair(i, image_path, label_path)`` writes pair ``i`` under
    ``imagesTr/`` and ``labelsTr/`` with file name ``names[i]``; the first ``num_train`` pairs form ``"training"``,
    the rest ``"validation"``. ``info`` (name, description, modality, labels, ...) heads the datalist, which is written
    last and atomically, so an interrupted run is never mistaken for a complete cache. ``what`` names the data in the
    messages, logged to ``log`` (the generator's own logger).

    Returns:
        path of ``dataset.json`` in ``output_dir``.
    """
    root = Path(output_dir)
    datalist_path = root / "dataset.json"
    # One writer: the ranks of a torchrun job (or two runs) start together; the others wait, then reuse the cache.
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        if cache_valid(datalist_path, generator):
            log.info("reusing %s in %s", what, root)
            return str(datalist_path)
        img_dir, lbl_dir = prepare_dataset_dirs(root, names, file_re, info["name"])
        log.info("generating %d %s in %s", len(names), what, root)
        entries = []
        for i, name in enumerate(names):
            write_pair(i, img_dir / name, lbl_dir / name)
            entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
        num_train = generator["num_train"]
        datalist = {
            **info,
            "numTraining": num_train,
            "numValidation": generator["num_val"],
            "generator": generator,
            "training": entries[:num_train],
            "validation": entries[num_train:],
        }
        write_json_atomic(datalist_path, datalist)
        return str(datalist_path)
