"""Draw the Dice of several comparisons (one panel per dataset) with their bootstrap intervals into one PNG.

Usage::

    python benchmarks/plot_comparison.py --output docs/images/compare_real.png \\
        "XCA=runs/compare_xca/results.csv" "DRIVE=runs/compare_drive/results.csv"

Each ``results.csv`` is the one ``python -m lightvessel_monai.compare`` writes. A ``*`` marks a method whose paired
difference from ``none`` has a 95 % interval that excludes 0. The table printed gives the same numbers.
"""

from __future__ import annotations

import argparse
import csv

from lightvessel_monai.compare.outputs import DicePanel, dice_panels


def read_results(path: str) -> tuple[float | None, list[dict[str, str]]]:
    """(teacher Dice, student rows) of one ``results.csv``."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise SystemExit(f"plot_comparison: {path} does not exist (run lightvessel_monai.compare first)") from None
    if not rows or "dice_ci_low" not in rows[0]:
        raise SystemExit(f"plot_comparison: {path} is not a results.csv with intervals (rerun the comparison)")
    teacher = next((float(r["dice_mean"]) for r in rows if r["model"] == "teacher"), None)
    return teacher, [r for r in rows if r["model"] != "teacher"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="LABEL=path/to/results.csv")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args()
    panels = []
    for item in args.results:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"plot_comparison: '{item}' is not LABEL=CSV")
        panels.append((label, *read_results(path)))
    print("| dataset | method | seeds | Dice | 95 % interval | − none | 95 % interval | significant |")
    print("|---|---|---|---|---|---|---|---|")
    figure = []
    for label, teacher, rows in panels:
        means = {r["model"]: float(r["dice_mean"]) for r in rows}
        intervals = {r["model"]: (float(r["dice_ci_low"]), float(r["dice_ci_high"])) for r in rows}
        significant = {r["model"]: r["significant"] == "yes" for r in rows}
        figure.append(DicePanel(label, means, intervals, teacher, significant))
        for r in rows:
            paired = r["significant"] in ("yes", "no")
            diff = f"{float(r['diff_vs_none']):+.4f}" if paired else "-"
            ci = f"[{float(r['diff_ci_low']):+.4f}, {float(r['diff_ci_high']):+.4f}]" if paired else "-"
            own = f"[{float(r['dice_ci_low']):.4f}, {float(r['dice_ci_high']):.4f}]"
            print(
                f"| {label} | {r['model']} | {r['seeds']} | {float(r['dice_mean']):.4f} | {own} | {diff} | {ci} | "
                f"{r['significant']} |"
            )
    dice_panels(figure, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
