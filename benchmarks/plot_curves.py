"""Draw learning curves written by ``LearningCurveHandler`` (``*_curve.csv``) into one PNG, and print their table.

Usage::

    python benchmarks/plot_curves.py --output docs/images/xca_curves.png --title "XCA" \\
        "teacher 6.5 M=runs/teacher_xca/eval/teacher_curve.csv" "none 25 k=runs/none_25k/eval/student_curve.csv"

For each curve the table gives the best validation Dice and where, and the plateau iteration of
:func:`lightvessel_monai.reporting.learning_curves.plateau_iteration`.
"""

from __future__ import annotations

import argparse

from lightvessel_monai.reporting.learning_curves import learning_curve_plot, plateau_iteration, read_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", help="LABEL=path/to/*_curve.csv")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--title", default="Learning curves")
    args = parser.parse_args()
    curves = {}
    print("| curve | best val Dice | at iteration | plateau iteration | last iteration | last Dice |")
    print("|---|---|---|---|---|---|")
    for item in args.curves:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"plot_curves: '{item}' is not LABEL=CSV")
        points = read_curve(path)
        if not points:
            raise SystemExit(f"plot_curves: no curve points in {path} (missing or empty file)")
        its, dice = [p[0] for p in points], [p[2] for p in points]
        curves[label] = (its, dice)
        best = max(range(len(dice)), key=dice.__getitem__)
        plateau = plateau_iteration(its, dice)
        print(f"| {label} | {dice[best]:.4f} | {its[best]} | {plateau or 'not reached'} | {its[-1]} | {dice[-1]:.4f} |")
    print(f"\nwritten: {learning_curve_plot(curves, args.output, title=args.title)}")


if __name__ == "__main__":
    main()
