"""Datasets and data utilities of lightvessel_monai."""

from __future__ import annotations

from typing import Any

__all__ = ["generate_angiogram", "make_synthetic_angiograms"]


def __getattr__(name: str) -> Any:
    # lazy re-export: importing the package must not pre-import synthetic_2d, or
    # `python -m lightvessel_monai.data.synthetic_2d` warns about a module executed twice
    if name in __all__:
        from lightvessel_monai.data import synthetic_2d

        return getattr(synthetic_2d, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
