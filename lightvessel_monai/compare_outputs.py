"""The outputs of a comparison: ``runs.csv``, ``results.csv``/``results.md`` with paired differences and their
bootstrap intervals, the Dice figure and the overlay figures. :mod:`lightvessel_monai.compare` runs the students;
this module only reads their results."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lightvessel_monai.evaluation import summarise
from lightvessel_monai.figures import dice_bar_chart, middle_slice, overlay_grid
from lightvessel_monai.metrics import METRIC_NAMES
from lightvessel_monai.significance import bootstrap_mean_ci, paired_difference
from lightvessel_monai.utils import atomic_write_text, csv_text, markdown_table

if TYPE_CHECKING:
    from lightvessel_monai.compare import Comparison

__all__ = ["ComparisonOutputs", "run_folder", "BASELINE", "CI_LEVEL"]

BASELINE = "none"  # the method every other one is paired with
CI_LEVEL = 0.95


class ComparisonOutputs:
    """Tables and figures of a finished comparison, written under its ``output_dir``.

    Args:
        comparison: the :class:`~lightvessel_monai.compare.Comparison` whose teacher and runs are reported (its
            output folder, evaluation settings, validation cases and teacher predictions are read, nothing else).
    """

    def __init__(self, comparison: Comparison) -> None:
        self.output_dir = comparison.output_dir
        self.mask_key = comparison.mask_key
        self.input_shape = comparison.input_shape
        self.latency_repeats = comparison.latency_repeats
        self.max_epochs = comparison.max_epochs
        self.iterations_per_epoch = comparison.iterations_per_epoch
        self.cases = comparison.cases
        self.teacher_predictions = comparison.teacher_predictions

    def write(self, teacher: dict[str, Any], results: Sequence[dict[str, Any]], methods: Sequence[str]) -> None:
        run_rows = [
            {
                "method": r["method"],
                "seed": r["seed"],
                "iterations": r["iterations"],
                "train_seconds": r["train_seconds"],
            }
            | {m: round(r["metrics"][m], 4) for m in METRIC_NAMES}
            for r in results
        ]
        atomic_write_text(self.output_dir / "runs.csv", csv_text(run_rows))
        table: list[dict[str, Any]] = []
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
        fields = list(dict.fromkeys(key for row in table for key in row))  # the teacher has no intervals
        atomic_write_text(self.output_dir / "results.csv", csv_text(table, fields, restval="-"))
        atomic_write_text(self.output_dir / "results.md", self._markdown(table) + _grad_markdown(results, methods))
        students = [row for row in table if row["model"] != "teacher"]
        dice_bar_chart(
            {row["model"]: row["dice_mean"] for row in students},
            {row["model"]: (row["dice_ci_low"], row["dice_ci_high"]) for row in students},
            str(self.output_dir / "dice.png"),
            reference=table[0]["dice_mean"],
            significant={row["model"]: row["significant"] == "yes" for row in students},
            title=f"Dice per method ({CI_LEVEL:.0%} bootstrap interval over seeds and cases)",
        )
        self._overlays(teacher, results, methods)

    def _intervals(self, name: str, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Bootstrap interval of the method's Dice and its paired difference from ``none`` (same seeds and cases)."""
        scores = _dice_table(results, name)
        own = _finite_columns(np.stack(list(scores.values())))
        _, low, high = bootstrap_mean_ci(own[0], level=CI_LEVEL) if own[0].size else (0.0, math.nan, math.nan)
        row: dict[str, Any] = {"dice_ci_low": low, "dice_ci_high": high}
        baseline = _dice_table(results, BASELINE)
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

        header = ["model", "seeds", "Dice", "IoU", "sensitivity", "specificity", "accuracy", "clDice", "HD95 (px)"]
        header += ["params", "GFLOPs", "CPU ms", "iterations"]
        lines = markdown_table(
            header,
            (
                [row["model"], row["seeds"], *(cell(row, m) for m in METRIC_NAMES)]
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
        paired = [row for row in table if row["model"] not in ("teacher", BASELINE) and row["paired_seeds"]]
        if paired:
            rows = []
            for row in paired:
                diff = f"{row['diff_vs_none']:+.4f}"
                interval = f"[{row['diff_ci_low']:+.4f}, {row['diff_ci_high']:+.4f}]"
                if row["significant"] == "yes":
                    diff, interval = f"**{diff}**", f"**{interval}**"
                rows.append(
                    [row["model"], row["paired_seeds"], f"{row['dice_mean']:.4f}", diff, interval, row["significant"]]
                )
            lines += [
                "",
                f"Dice difference from `{BASELINE}`, paired seed by seed and case by case, with its {CI_LEVEL:.0%} "
                "bootstrap interval (seeds and cases resampled); **bold** where the interval excludes 0.",
                "",
                *markdown_table(
                    ["model", "seeds", "Dice", f"Dice − {BASELINE}", f"{CI_LEVEL:.0%} interval", "significant"], rows
                ),
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


def _dice_table(results: Sequence[dict[str, Any]], method: str) -> dict[int, np.ndarray]:
    """``{seed: per-case Dice}`` of one method's runs (cases in validation order)."""
    return {
        int(r["seed"]): np.array([case["dice"] for case in r["cases"]], dtype=np.float64)
        for r in results
        if r["method"] == method
    }


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
