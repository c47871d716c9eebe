"""The outputs of a comparison: ``runs.csv``, ``results.csv``/``results.md`` with paired differences and their
bootstrap intervals, the Dice figure and the overlay figures. :mod:`lightvessel_monai.compare.runs` runs the students;
this module only reads their results.

With ``--target-data``, every result also holds ``targets``: ``{name: {"metrics", "cases"}}`` on each target's
images. The tables get the same Dice summary and paired difference per target, in columns prefixed ``<name>_``
(CSV) or titled by the target (Markdown), beside the source's; ``dice.png`` gets one panel per target."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import matplotlib.pyplot as plt
import numpy as np
import torch

from lightvessel_monai.compare.significance import bootstrap_mean_ci, paired_difference
from lightvessel_monai.files import atomic_write_text, csv_text, markdown_table
from lightvessel_monai.metrics import METRIC_NAMES
from lightvessel_monai.reporting.evaluation import summarise
from lightvessel_monai.reporting.figures import dice_bar_chart, draw_dice_panel, middle_slice, overlay_grid, save_figure


class ComparisonState(Protocol):
    """What :class:`ComparisonOutputs` reads of a finished comparison
    (:class:`lightvessel_monai.compare.runs.Comparison` has it); a protocol, so that this module does not
    import the one that runs the students."""

    output_dir: Path
    mask_key: str | None
    input_shape: Sequence[int]
    latency_repeats: int
    max_epochs: int
    iterations_per_epoch: int
    cases: list
    teacher_predictions: list
    source_name: str
    targets: Sequence[Any]


__all__ = ["ComparisonOutputs", "ComparisonState", "DicePanel", "dice_panels", "run_folder", "BASELINE", "CI_LEVEL"]

BASELINE = "none"  # the method every other one is paired with
CI_LEVEL = 0.95


class DicePanel(NamedTuple):
    """One panel of :func:`dice_panels`: the arguments of
    :func:`~lightvessel_monai.reporting.figures.draw_dice_panel`."""

    title: str
    means: Mapping[str, float]
    intervals: Mapping[str, tuple[float, float]]
    reference: float | None = None
    significant: Mapping[str, bool] | None = None


def dice_panels(panels: Sequence[DicePanel], path: str) -> str:
    """Several Dice bar charts side by side in one PNG (datasets of one comparison, or several comparisons)."""
    width = max(len(panel.means) for panel in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.1 * width + 2.0), 4.2), dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        draw_dice_panel(ax, panel.means, panel.intervals, panel.reference, panel.title, panel.significant)
    return save_figure(fig, path)


class ComparisonOutputs:
    """Tables and figures of a finished comparison, written under its ``output_dir``.

    Args:
        comparison: the :class:`~lightvessel_monai.compare.runs.Comparison` whose teacher and runs are reported (its
            output folder, evaluation settings, validation cases, teacher predictions and targets are read, nothing
            else).
    """

    def __init__(self, comparison: ComparisonState) -> None:
        self.output_dir = comparison.output_dir
        self.mask_key = comparison.mask_key
        self.input_shape = comparison.input_shape
        self.latency_repeats = comparison.latency_repeats
        self.max_epochs = comparison.max_epochs
        self.iterations_per_epoch = comparison.iterations_per_epoch
        self.cases = comparison.cases
        self.teacher_predictions = comparison.teacher_predictions
        self.source_name = comparison.source_name
        self.targets = {target.name: target for target in comparison.targets}

    def write(self, teacher: dict[str, Any], results: Sequence[dict[str, Any]], methods: Sequence[str]) -> None:
        run_rows = [
            {
                "method": r["method"],
                "seed": r["seed"],
                "iterations": r["iterations"],
                "train_seconds": r["train_seconds"],
            }
            | {m: round(r["metrics"][m], 4) for m in METRIC_NAMES}
            | {f"{t}_dice": round(r["targets"][t]["metrics"]["dice"], 4) for t in self.targets}
            for r in results
        ]
        atomic_write_text(self.output_dir / "runs.csv", csv_text(run_rows))
        table: list[dict[str, Any]] = []
        target_cells: list[dict[str, Any]] = []
        for name in ["teacher", *methods]:
            runs = [teacher] if name == "teacher" else [r for r in results if r["method"] == name]
            row: dict[str, Any] = {"model": name, "seeds": len(runs) if name != "teacher" else "-"}
            for metric in METRIC_NAMES:
                row[f"{metric}_mean"], row[f"{metric}_std"] = summarise([r["metrics"][metric] for r in runs])
            for fact in ("params", "gflops", "cpu_latency_ms"):
                row[fact] = runs[0][fact]
            row["iterations"] = runs[0].get("iterations", "-")
            if name != "teacher":
                row.update(self._intervals(name, results))
            table.append(row)
            target_cells.append({})
            for target in self.targets:  # the same summary and intervals on the target's images
                cells = target_cells[-1]
                dice = [r["targets"][target]["metrics"]["dice"] for r in runs]
                cells[f"{target}_dice_mean"], cells[f"{target}_dice_std"] = summarise(dice)
                if name != "teacher":
                    cells.update({f"{target}_{k}": v for k, v in self._intervals(name, results, target).items()})
        # the source's columns first (the teacher has no intervals), then each target's
        fields = list(dict.fromkeys(key for row in table for key in row))
        fields += list(dict.fromkeys(key for cells in target_cells for key in cells))
        table = [row | cells for row, cells in zip(table, target_cells, strict=True)]
        atomic_write_text(self.output_dir / "results.csv", csv_text(table, fields, restval="-"))
        atomic_write_text(self.output_dir / "results.md", self._markdown(table) + _grad_markdown(results, methods))
        self._dice_figure(table)
        self._overlays(teacher, results, methods)

    def _dice_figure(self, table: Sequence[dict[str, Any]]) -> None:
        """``dice.png``: the source's Dice per method; with targets, one panel per dataset side by side."""
        source = _dice_panel(table, "", f"Dice per method ({CI_LEVEL:.0%} bootstrap interval over seeds and cases)")
        path = str(self.output_dir / "dice.png")
        if not self.targets:
            dice_bar_chart(source.means, source.intervals, path, source.reference, source.title, source.significant)
            return
        panels = [source._replace(title=f"source {self.source_name}: validation split")]
        for name, target in self.targets.items():
            panels.append(_dice_panel(table, f"{name}_", f"target {name}: all {len(target.images)} images"))
        dice_panels(panels, path)

    def _intervals(self, name: str, results: Sequence[dict[str, Any]], target: str | None = None) -> dict[str, Any]:
        """Bootstrap interval of the method's Dice and its paired difference from ``none`` (same seeds and cases),
        on the source's validation cases or on a target's images."""
        scores = _dice_table(results, name, target)
        own = _finite_columns(np.stack(list(scores.values())))
        _, low, high = bootstrap_mean_ci(own[0], level=CI_LEVEL) if own[0].size else (0.0, math.nan, math.nan)
        row: dict[str, Any] = {"dice_ci_low": low, "dice_ci_high": high}
        baseline = _dice_table(results, BASELINE, target)
        seeds = sorted(set(scores) & set(baseline))
        if name == BASELINE or not seeds:
            unpaired = {"diff_vs_none": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan}
            return {**row, **unpaired, "paired_seeds": 0, "significant": "-"}
        method, base = _finite_columns(np.stack([scores[s] for s in seeds]), np.stack([baseline[s] for s in seeds]))
        diff = paired_difference(method, base, level=CI_LEVEL)
        return {
            **row,
            "diff_vs_none": diff.mean,
            "diff_ci_low": diff.low,
            "diff_ci_high": diff.high,
            "paired_seeds": len(seeds),
            "significant": "yes" if diff.significant else "no",
        }

    def _markdown(self, table: Sequence[dict[str, Any]]) -> str:
        def cell(row: Mapping[str, Any], metric: str) -> str:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            if not math.isfinite(mean):
                return "n/a"
            digits = 2 if metric == "hd95" else 4
            return f"{mean:.{digits}f} ± {std:.{digits}f}" if row["model"] != "teacher" else f"{mean:.{digits}f}"

        header = ["model", "seeds", "Dice", *(f"{t} Dice" for t in self.targets)]
        header += ["IoU", "sensitivity", "specificity", "accuracy", "clDice", "HD95 (px)"]
        header += ["params", "GFLOPs", "CPU ms", "iterations"]
        lines = markdown_table(
            header,
            (
                [row["model"], row["seeds"], cell(row, "dice"), *(cell(row, f"{t}_dice") for t in self.targets)]
                + [cell(row, m) for m in METRIC_NAMES[1:]]
                + [f"{row['params']:,}", f"{row['gflops']:.2f}", f"{row['cpu_latency_ms']:.1f}", row["iterations"]]
                for row in table
            ),
        )
        where = f" inside `{self.mask_key}`" if self.mask_key else ""
        shape = "x".join(str(s) for s in self.input_shape[2:])
        lines += [
            "",
            f"Mean ± sample std over seeds of the per-run mean over held-out cases{where}; "
            "the teacher is one checkpoint. "
            f"FLOPs and CPU latency (median of {self.latency_repeats}, {torch.get_num_threads()} threads) for one "
            f"{shape} input. Every student: {self.max_epochs} epochs x {self.iterations_per_epoch} iterations.",
        ]
        if self.targets:
            described = [
                f"`{name}` ({len(t.images)} images{f' inside `{t.mask_key}`' if t.mask_key else ''}, `{t.overlay}`)"
                for name, t in self.targets.items()
            ]
            lines[-1] += (
                " Target columns: the same final weights on every labelled image (training and validation sections) "
                f"of data no model was trained or selected on: {', '.join(described)}."
            )
        paired = [row for row in table if row["model"] not in ("teacher", BASELINE) and row["paired_seeds"]]
        if paired:
            rows = [
                [row["model"], row["paired_seeds"], *_paired_cells(row)]
                + [cell for t in self.targets for cell in _paired_cells(row, f"{t}_")]
                for row in paired
            ]
            header = ["model", "seeds", "Dice", f"Dice − {BASELINE}", f"{CI_LEVEL:.0%} interval", "significant"]
            for t in self.targets:
                header += [f"{t} Dice", f"{t} Dice − {BASELINE}", f"{t} {CI_LEVEL:.0%} interval", f"{t} significant"]
            lines += [
                "",
                f"Dice difference from `{BASELINE}`, paired seed by seed and case by case, with its {CI_LEVEL:.0%} "
                "bootstrap interval (seeds and cases resampled); **bold** where the interval excludes 0."
                + (" On a target the cases are all its images." if self.targets else ""),
                "",
                *markdown_table(header, rows),
            ]
        return "\n".join(lines) + "\n"

    def _overlays(self, teacher: dict[str, Any], results: Sequence[dict[str, Any]], methods: Sequence[str]) -> None:
        first_seed = {}
        for r in results:
            first_seed.setdefault(r["method"], r)
        for index, case in enumerate(self.cases):
            predictions = {"teacher": middle_slice(self.teacher_predictions[index])}
            scores = {"teacher": teacher["cases"][index]["dice"]}
            for name in methods:
                r = first_seed.get(name)
                path = run_folder(self.output_dir, name, r["seed"]) / f"prediction_{index}.npy" if r else None
                if path is not None and path.is_file():
                    predictions[f"{name} (seed {r['seed']})"] = middle_slice(np.load(path))
                    scores[f"{name} (seed {r['seed']})"] = r["cases"][index]["dice"]
            mask = middle_slice(case["mask"]) if "mask" in case else None
            overlay_grid(
                middle_slice(case["image"]),
                middle_slice(case["label"]),
                predictions,
                str(self.output_dir / "overlays" / f"case_{index}.png"),
                mask=mask,
                scores=scores,
            )


def _grad_markdown(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """A table of each term's median gradient norm on the student, as a multiple of the segmentation loss's.

    Empty when no run measured them (``term_grad_interval`` 0). Per run, the median over the measured iterations;
    per method, the mean of those medians over seeds.
    """
    rows = []
    for name in methods:
        runs = [r["term_grad_norms"] for r in results if r["method"] == name and r.get("term_grad_norms")]
        if not runs:
            continue
        terms = list(runs[0])
        mean = {t: float(np.mean([r[t] for r in runs])) for t in terms}
        seg = mean.get("seg", 0.0)
        cells = [f"{t}: {mean[t]:.3g}" + (f" ({mean[t] / seg:.2f}x)" if seg > 0 and t != "seg" else "") for t in terms]
        rows.append([name, len(runs), ", ".join(cells)])
    if not rows:
        return ""
    return (
        "\n".join(
            [
                "",
                "Gradient norm of each weighted term on the student's parameters, ||d(w * term)/d(theta)||: the median "
                "over the measured iterations of a run, averaged over seeds; in brackets, as a multiple of the "
                "segmentation loss's.",
                "",
                *markdown_table(["model", "seeds", "term: gradient norm (x seg)"], rows),
            ]
        )
        + "\n"
    )


def _dice_table(results: Sequence[dict[str, Any]], method: str, target: str | None = None) -> dict[int, np.ndarray]:
    """``{seed: per-case Dice}`` of one method's runs (cases in validation order, or the target's images in its
    datalist's order)."""
    return {
        int(r["seed"]): np.array(
            [case["dice"] for case in (r["cases"] if target is None else r["targets"][target]["cases"])],
            dtype=np.float64,
        )
        for r in results
        if r["method"] == method
    }


def _paired_cells(row: Mapping[str, Any], prefix: str = "") -> list[Any]:
    """Dice, difference from ``none``, its interval and significance (bold when significant) of one results row,
    from its ``<prefix>dice_mean``... columns (``prefix`` ``"<target>_"`` for a target's)."""
    dice = f"{row[f'{prefix}dice_mean']:.4f}"
    if not row[f"{prefix}paired_seeds"]:
        return [dice, "-", "-", "-"]
    diff = f"{row[f'{prefix}diff_vs_none']:+.4f}"
    interval = f"[{row[f'{prefix}diff_ci_low']:+.4f}, {row[f'{prefix}diff_ci_high']:+.4f}]"
    if row[f"{prefix}significant"] == "yes":
        diff, interval = f"**{diff}**", f"**{interval}**"
    return [dice, diff, interval, row[f"{prefix}significant"]]


def _dice_panel(table: Sequence[Mapping[str, Any]], prefix: str, title: str) -> DicePanel:
    """The students' Dice (``<prefix>dice_mean`` ...) of a results table, the teacher's as the reference line."""
    students = [row for row in table if row["model"] != "teacher"]
    return DicePanel(
        title,
        {row["model"]: row[f"{prefix}dice_mean"] for row in students},
        {row["model"]: (row[f"{prefix}dice_ci_low"], row[f"{prefix}dice_ci_high"]) for row in students},
        table[0][f"{prefix}dice_mean"],
        {row["model"]: row[f"{prefix}significant"] == "yes" for row in students},
    )


def _finite_columns(*tables: np.ndarray) -> list[np.ndarray]:
    """The tables restricted to the cases (columns) that are finite in every row of every table.

    A case without foreground in the annotation has no Dice (nan); it is left out of every table alike, so that
    the pairing stays case by case.
    """
    keep = np.all([np.isfinite(t).all(axis=0) for t in tables], axis=0)
    return [t[:, keep] for t in tables]


def run_folder(output_dir: Path, method: str, seed: int) -> Path:
    """``runs/<spec>_seed<k>``: a variant's spec is kept readable, with anything unsafe in a file name as ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._=+,\-]", "_", method)
    return output_dir / "runs" / f"{safe}_seed{seed}"
