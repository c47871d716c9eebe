"""Score finished training runs' final weights on the validation cases and compare methods paired by seed and case.

Usage::

    python benchmarks/paired_runs.py --data configs/data/xca.json --scores docs/results/xca_arcade_scores.csv \\
        --teacher runs/ul27/teacher/teacher_<fingerprint>.pt \\
        --run "none:0=runs/ul27/none_s0/models/model_final.pt" --run "fm_kd:0=runs/ul27/fm_kd_s0/models/model_final.pt"

Each ``--run METHOD:SEED=MODEL`` is a ``models/model_final.pt`` written by ``monai.bundle run training`` (the final
weights; ``model.pt`` is the best validated checkpoint, selected on the very images scored here, so it is not a fair
score), or a ``model.pt`` of ``lightvessel_monai.compare`` (validated once, at the end), loaded into the overlay's
``network_def``; ``--teacher`` goes into ``teacher_def``. Every network is scored by the same code as
``lightvessel_monai.compare`` (its validation dataloader, inferer and post-processing,
:func:`lightvessel_monai.reporting.evaluation.evaluate_cases`), one row per validation case.

``--scores`` is a CSV of those rows (method, seed, case, dice, sensitivity, clDice). Rows already there are kept
(a run given again replaces its own), so runs finished in different sessions add up to one comparison; the file is
written atomically. The table printed last pairs every method with ``--baseline`` on the seeds both have, case by
case, with the two-level bootstrap interval of
:func:`lightvessel_monai.compare.significance.paired_difference`, and gives each method's distance to the teacher.
``--figure PNG`` draws each method's Dice with its two-level bootstrap interval (the teacher dashed), a ``*`` where
the paired difference from the baseline excludes 0.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.compare.runs import _evaluation_inputs
from lightvessel_monai.compare.significance import bootstrap_mean_ci, paired_difference
from lightvessel_monai.files import atomic_write_text, csv_text
from lightvessel_monai.reporting.evaluation import evaluate_cases, summarise

FIELDS = ("method", "seed", "case", "dice", "sensitivity", "cldice")
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"


def parser_for(data: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(TRAIN_CONFIG), *data])
    return parser


def score(parser: ConfigParser, network_key: str, weights: str) -> list[dict[str, float]]:
    network = parser.get_parsed_content(network_key, instantiate=True)
    load_state_dict_checked(network, weights, what=f"{network_key} ({weights})")
    rows, _ = evaluate_cases(network, **_evaluation_inputs(parser, parser.get("eval_mask_key", None)))
    return rows


def read_scores(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {**row, "seed": int(row["seed"]), "case": int(row["case"]), **{k: float(row[k]) for k in FIELDS[3:]}}
            for row in csv.DictReader(f)
        ]


def table(rows: list[dict], method: str, seeds: list[int]) -> np.ndarray:
    """``(seeds, cases)`` Dice of ``method``."""
    by = {(r["seed"], r["case"]): r["dice"] for r in rows if r["method"] == method}
    cases = sorted({c for s, c in by if s in seeds})
    return np.array([[by[(s, c)] for c in cases] for s in seeds])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data overlay(s), comma-separated, on top of train.json")
    ap.add_argument("--run", action="append", default=[], help="METHOD:SEED=path/to/model.pt (repeatable)")
    ap.add_argument("--teacher", help="the teacher checkpoint (scored as method 'teacher', seed 0)")
    ap.add_argument("--scores", required=True, help="the per-case CSV to extend (created if missing)")
    ap.add_argument("--baseline", default="none")
    ap.add_argument("--figure", help="also draw the Dice of every method with its 95 %% interval into this PNG")
    ap.add_argument("--title", default="Dice per method", help="the figure's title")
    args = ap.parse_args()
    scores_path = Path(args.scores)
    rows = read_scores(scores_path)
    todo = [("teacher", 0, "teacher_def", args.teacher)] if args.teacher else []
    for spec in args.run:
        name, sep, weights = spec.partition("=")
        method, sep2, seed = name.partition(":")
        if not sep or not sep2 or not seed.isdigit():
            raise SystemExit(f"paired_runs: --run '{spec}' is not METHOD:SEED=MODEL")
        todo.append((method, int(seed), "network_def", weights))
    if todo:
        parser = parser_for(args.data.split(","))
        for method, seed, key, weights in todo:
            cases = score(parser, key, weights)
            rows = [r for r in rows if (r["method"], r["seed"]) != (method, seed)]
            rows += [
                {"method": method, "seed": seed, "case": i, **{k: c[k] for k in FIELDS[3:]}}
                for i, c in enumerate(cases)
            ]
            print(f"scored {method} seed {seed}: Dice {np.mean([c['dice'] for c in cases]):.4f} ({weights})")
        rows.sort(key=lambda r: (r["method"], r["seed"], r["case"]))
        atomic_write_text(scores_path, csv_text(rows, FIELDS))

    seeds_of = defaultdict(set)
    for r in rows:
        seeds_of[r["method"]].add(r["seed"])
    teacher = table(rows, "teacher", [0]) if "teacher" in seeds_of else None
    means, intervals, significant = {}, {}, {}
    out = io.StringIO()
    out.write(
        f"| method | seeds | Dice, mean over seeds (sd) | sensitivity | vs {args.baseline}, paired (95 % CI) "
        "| seeds paired | vs teacher |\n|---|---|---|---|---|---|---|\n"
    )
    for method in sorted(seeds_of, key=lambda m: (m != "teacher", m != args.baseline, m)):
        seeds = sorted(seeds_of[method])
        dice = table(rows, method, seeds)
        mean, sd = summarise(dice.mean(axis=1).tolist())
        sens = np.mean([r["sensitivity"] for r in rows if r["method"] == method])
        paired, n = "", ""
        common = sorted(seeds_of[method] & seeds_of.get(args.baseline, set()))
        if method not in ("teacher", args.baseline) and common:
            d = paired_difference(table(rows, method, common), table(rows, args.baseline, common))
            paired = f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" + (" *" if d.significant else "")
            n = str(len(common))
            significant[method] = d.significant
        if method != "teacher":
            means[method], low, high = bootstrap_mean_ci(dice)
            intervals[method] = (low, high)
        gap = "" if teacher is None or method == "teacher" else f"{100 * (dice.mean() - teacher.mean()):+.2f}"
        cells = [method, ",".join(map(str, seeds)), f"{mean:.4f} ({sd:.4f})", f"{sens:.4f}", paired, n, gap]
        out.write("| " + " | ".join(cells) + " |\n")
    print(out.getvalue(), end="")
    if args.figure:
        from lightvessel_monai.reporting.figures import dice_bar_chart

        title = f"{args.title}\n95 % interval (seeds, cases); * paired, differs from {args.baseline}"
        reference = None if teacher is None else float(teacher.mean())
        print(f"written: {dice_bar_chart(means, intervals, args.figure, reference, title, significant)}")


if __name__ == "__main__":
    main()
