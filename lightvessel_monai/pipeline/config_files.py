"""Where the bundle configs and the method and data overlays are, in a checkout and in an installed package.

A source checkout has them at ``bundle/configs/`` and ``configs/{methods,data}/`` beside the package. A plain
``pip install .`` copies them, as data files, to ``<prefix>/share/lightvessel_monai/`` with the same layout
(``setup.cfg``, ``[options.data_files]``). ``LIGHTVESSEL_CONFIG_ROOT`` (or ``compare --config_root``) names another
folder with that layout. :func:`find_bundle_root` is the bundle folder a run writes under (``bundle_root``).
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from lightvessel_monai.errors import ConfigKeyError

__all__ = ["ENV_VAR", "config_root", "data_overlay", "find_bundle_root", "methods_dir", "train_config"]

ENV_VAR = "LIGHTVESSEL_CONFIG_ROOT"
_TRAIN = Path("bundle") / "configs" / "train.json"


def _candidates(explicit: str | os.PathLike | None) -> list[tuple[str, Path]]:
    if explicit is not None:
        return [("--config_root", Path(explicit))]
    if os.environ.get(ENV_VAR):
        return [(ENV_VAR, Path(os.environ[ENV_VAR]))]
    return [
        ("the source checkout", Path(__file__).resolve().parents[2]),
        ("the installed package data", Path(sysconfig.get_path("data")) / "share" / "lightvessel_monai"),
    ]


def config_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder that holds ``bundle/configs/train.json`` and ``configs/methods/``; a one-line error if none does."""
    candidates = _candidates(explicit)
    for _, folder in candidates:
        if (folder / _TRAIN).is_file() and (folder / "configs" / "methods").is_dir():
            return folder
    tried = "; ".join(f"{what}: {folder}" for what, folder in candidates)
    raise ConfigKeyError(
        f"cannot find the bundle configs ({_TRAIN} and configs/methods/) in {tried}; "
        f"set {ENV_VAR} or --config_root to a folder that holds them"
    )


def train_config(root: str | os.PathLike | None = None) -> Path:
    return config_root(root) / _TRAIN


def methods_dir(root: str | os.PathLike | None = None) -> Path:
    return config_root(root) / "configs" / "methods"


def data_overlay(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A data overlay given as a path, or by name (``xca``, ``drive.json``) from ``configs/data/``."""
    path = Path(spec)
    if path.is_file():
        return path
    named = config_root(root) / "configs" / "data" / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if named.is_file():
        return named
    raise ConfigKeyError(f"data overlay {spec} does not exist (neither as a path nor as {named})")


def find_bundle_root(default: str = ".") -> str:
    """``bundle/`` when run from the repository root, else ``default`` (the bundle's own directory)."""
    candidate = Path("bundle")
    if (candidate / "configs" / "metadata.json").is_file():
        return str(candidate)
    return default
