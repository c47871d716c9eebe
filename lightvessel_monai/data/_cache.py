"""Helpers shared by the synthetic dataset generators: per-item seeds, cache validation, atomic datalist write."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["cache_valid", "derived_seed", "write_json_atomic"]


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
    """Write ``data`` as JSON to ``path`` via a temporary file in the same folder and ``os.replace``.

    Readers see either the old file, no file, or the complete new one, never a partial write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_dataset_dirs(root: Path, names: list[str], file_re: re.Pattern) -> tuple[Path, Path]:
    """Create ``imagesTr``/``labelsTr``, invalidate the old datalist and drop our stale files not in ``names``.

    The datalist goes first: from here on the folder holds a mix of old and new files, and a killed
    generation must not look like a valid cache.
    """
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
