"""Datasets and data utilities of lightvessel_monai."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["generate_angiogram", "generate_ct_volume", "make_synthetic_angiograms", "make_synthetic_ct"]

# lazy re-export: importing the package must not pre-import the generators, or
# `python -m lightvessel_monai.data.synthetic_2d` (or synthetic_3d) warns about a module executed twice
_SOURCES = {
    "generate_angiogram": "synthetic_2d",
    "make_synthetic_angiograms": "synthetic_2d",
    "generate_ct_volume": "synthetic_3d",
    "make_synthetic_ct": "synthetic_3d",
}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
