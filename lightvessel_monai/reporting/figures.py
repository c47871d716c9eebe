"""Figures (PNG, via matplotlib's Agg backend): a method comparison's Dice bar chart and prediction overlays, and the
validation overlays of a training run; the curve plots are in :mod:`lightvessel_monai.reporting.learning_curves`."""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "dice_bar_chart",
    "draw_dice_panel",
    "save_figure",
    "error_overlay",
    "overlay_grid",
    "middle_slice",
    "most_foreground_slice",
    "validation_overlay_figure",
]


def dice_bar_chart(
    means: Mapping[str, float],
    intervals: Mapping[str, tuple[float, float]],
    path: str,
    reference: float | None = None,
    title: str = "Dice per method",
    significant: Mapping[str, bool] | None = None,
) -> str:
    """Bar chart of mean Dice with interval error bars ``(low, high)``; ``reference`` (the teacher) is dashed.

    Methods flagged in ``significant`` (their difference from the baseline excludes 0) get a ``*`` on their label.
    """
    fig, ax = plt.subplots(figsize=(1.2 * len(means) + 2.5, 4.0), dpi=120)
    draw_dice_panel(ax, means, intervals, reference, title, significant)
    return save_figure(fig, path)


def draw_dice_panel(
    ax: plt.Axes,
    means: Mapping[str, float],
    intervals: Mapping[str, tuple[float, float]],
    reference: float | None = None,
    title: str = "",
    significant: Mapping[str, bool] | None = None,
) -> None:
    """One panel of :func:`dice_bar_chart` on ``ax`` (shared by the per-dataset and the combined figures)."""
    names = list(means)
    x = np.arange(len(names))
    mean = np.array([means[n] for n in names])
    low = np.array([intervals.get(n, (means[n], means[n]))[0] for n in names])
    high = np.array([intervals.get(n, (means[n], means[n]))[1] for n in names])
    low, high = np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean)
    ax.bar(x, mean, yerr=[mean - low, high - mean], capsize=4, color="#4C72B0")
    if reference is not None:
        ax.axhline(reference, color="#C44E52", linestyle="--", label=f"teacher {reference:.4f}")
        ax.legend(loc="lower right")
    for i in range(len(names)):
        ax.text(i, high[i] + 0.005, f"{mean[i]:.3f}", ha="center", va="bottom", fontsize=8)
    labels = [f"{n} *" if (significant or {}).get(n) else n for n in names]
    ax.set_xticks(x, labels, rotation=30, ha="right")
    floor = min(list(low) + ([reference] if reference is not None else [])) if names else 0.0
    ax.set_ylim(max(0.0, floor - 0.05), min(1.0, max(list(high) + [reference or 0.0]) + 0.06) if names else 1.0)
    ax.set_ylabel("Dice")
    ax.set_title(title, fontsize=10)


def save_figure(fig: plt.Figure, path: str) -> str:
    """Write ``fig`` to ``path`` as PNG, atomically (:func:`_write_png`), and close it."""
    return _write_png(fig, path)


def middle_slice(array: np.ndarray) -> np.ndarray:
    """A 2D view of a 2D map or of the middle slice (last axis) of a 3D one."""
    return array if array.ndim == 2 else array[..., array.shape[-1] // 2]


def error_overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """RGB float image: the grey image with true positives white, false positives red and false negatives blue.

    ``image``: ``(H, W)`` intensities (any range); ``label``/``pred``: ``(H, W)`` class maps (foreground = > 0);
    ``mask``: optional ``(H, W)`` region of interest (e.g. the DRIVE field of view); outside it is darkened.
    """
    img = image.astype(np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    rgb = np.repeat(img[..., None], 3, axis=-1) * 0.6
    lab, prd = label > 0, pred > 0
    rgb[lab & prd] = (1.0, 1.0, 1.0)
    rgb[~lab & prd] = (1.0, 0.2, 0.2)
    rgb[lab & ~prd] = (0.2, 0.5, 1.0)
    if mask is not None:
        rgb[~(mask > 0)] *= 0.3
    return rgb


def overlay_grid(
    image: np.ndarray,
    label: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: str,
    mask: np.ndarray | None = None,
    scores: Mapping[str, float] | None = None,
) -> str:
    """One PNG: the image, the annotation, then each model's error overlay (white TP, red FP, blue FN)."""
    panels: list[tuple[str, np.ndarray, str | None]] = [("image", image, "gray"), ("annotation", label > 0, "gray")]
    panels += [(name, error_overlay(image, label, pred, mask), None) for name, pred in predictions.items()]
    cols = min(len(panels), 5)
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, data, cmap) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        score = (scores or {}).get(name)
        ax.set_title(name if score is None else f"{name} (Dice {score:.3f})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_png(fig: plt.Figure, path: str) -> str:
    """Write ``fig`` as PNG with :func:`lightvessel_monai.files.atomic_write` (hidden temporary file, fsync, rename)."""
    from lightvessel_monai.files import atomic_write

    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)


def most_foreground_slice(label: np.ndarray) -> int:
    """Index along the last axis of the slice of a 3D map with the most foreground (> 0); the middle one if none.

    After ``Orientationd(axcodes="RAS")`` the last axis runs inferior to superior, so this is an axial slice. Ties
    go to the first such slice, so the choice is deterministic.
    """
    counts = (np.asarray(label) > 0).reshape(-1, label.shape[-1]).sum(axis=0)
    return int(np.argmax(counts)) if counts.max(initial=0) > 0 else label.shape[-1] // 2


def validation_overlay_figure(cases: list[Mapping[str, object]], path: str, title: str = "") -> str:
    """One PNG, one row per case: the image, the annotation, the prediction and their error overlay.

    Each case maps ``image``, ``label``, ``pred`` to ``(H, W)`` arrays (intensities; class maps, foreground > 0),
    with optional ``mask`` (region of interest, darkened outside), ``dice`` (shown in the row) and ``title``
    (the case's name). A case with ``channels`` (``{panel title: (H, W)}``, e.g. a 2.5D slab's neighbouring
    slices) shows those panels in place of the single image. The error overlay is :func:`error_overlay`, drawn on
    ``image``: true positives white, false positives red, false negatives blue. Written atomically.
    """
    rows = max(len(cases), 1)
    columns = 3 + max((len(c.get("channels") or {}) or 1 for c in cases), default=1)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.7 * rows + 0.4), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, case in zip(axes, cases, strict=False):
        image, label, pred = (np.asarray(case[k]) for k in ("image", "label", "pred"))
        mask = None if case.get("mask") is None else np.asarray(case["mask"])
        dice = case.get("dice")
        case_title = str(case.get("title") or "image")
        views = dict(case.get("channels") or {}) or {case_title: image}
        if case.get("channels"):
            first = next(iter(views))
            views = {f"{case_title}: {first}" if k == first else k: v for k, v in views.items()}
        panels = [(name, np.asarray(view), "gray") for name, view in views.items()]
        panels += [
            ("annotation", label > 0, "gray"),
            ("prediction", pred > 0, "gray"),
            ("TP white, FP red, FN blue" + ("" if dice is None else f" (Dice {float(dice):.3f})"), None, None),
        ]
        for ax, (name, data, cmap) in zip(row, panels, strict=False):
            picture = error_overlay(image, label, pred, mask) if data is None else data
            ax.imshow(picture, cmap=cmap, interpolation="nearest")
            ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _write_png(fig, path)
