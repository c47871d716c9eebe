"""Learning curves of the ``none`` student (labels alone) for several student sizes: where does it plateau?

Usage::

    python benchmarks/bench_student_size.py --data configs/data/xca.json \\
        --channels 4,8,16,32 8,16,32,64 12,24,48,96 --iterations 3000 --output_dir runs/student_size_xca

Each size is one run of the real command, ``python -m monai.bundle run training`` with ``train.json`` + the data
overlay + ``configs/methods/none.json``, a constant learning rate (``cosine_lr false``: the curve shows where
training alone stops improving, which sets the student budget) and validation every ``--val_every`` iterations
(rounded to whole epochs). The student is the overlay's ``network_def`` with its ``channels`` replaced.

Prints a Markdown table (parameters, best validation Dice and where, the plateau iteration by
:func:`lightvessel_monai.reporting.learning_curves.plateau_iteration`, minutes) and writes ``curves.png`` with
every curve, plus each run's ``student_curve.csv`` under ``--output_dir/<channels>/eval``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from monai.bundle import ConfigParser

from lightvessel_monai.networks import count_parameters
from lightvessel_monai.reporting.learning_curves import learning_curve_plot, plateau_iteration, read_curve

REPO = Path(__file__).resolve().parent.parent


def iterations_per_epoch(configs: list[str]) -> int:
    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = str(REPO / "bundle")
    return math.ceil(len(parser.get_parsed_content("train#datalist")) / int(parser.get_parsed_content("batch_size")))


def student_params(configs: list[str], channels: list[int]) -> int:
    parser = ConfigParser()
    parser.read_config(configs)
    parser["network_def#channels"] = channels
    return count_parameters(parser.get_parsed_content("network_def"))


def cli_value(value: object) -> str:
    """A command-line value as ``monai.bundle run`` (python-fire) parses it: Python literals, not JSON."""
    return value if isinstance(value, str) else repr(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data overlay, e.g. configs/data/xca.json")
    parser.add_argument("--channels", nargs="+", required=True, help="UNet channels per size, e.g. 8,16,32,64")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--val_every", type=int, default=200, help="validation interval in iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="runs/student_size")
    parser.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE overrides (JSON values)")
    args = parser.parse_args()

    configs = [str(REPO / "bundle/configs/train.json"), str(Path(args.data).resolve())]
    per_epoch = iterations_per_epoch(configs)
    epochs = math.ceil(args.iterations / per_epoch)
    val_interval = max(1, round(args.val_every / per_epoch))
    out = Path(args.output_dir).resolve()
    curves, rows = {}, []
    for spec in args.channels:
        channels = [int(c) for c in spec.split(",")]
        run_dir = out / "-".join(map(str, channels))
        overrides = {
            "network_def#channels": channels,
            "cosine_lr": False,
            "max_epochs": epochs,
            "val_interval": val_interval,
            "seed": args.seed,
            "progress_bar": False,
            "resume": False,
            "ckpt_dir": str(run_dir / "models"),
            "resume_dir": str(run_dir / "resume"),
            "output_dir": str(run_dir / "eval"),
        }
        for item in args.set:
            key, _, value = item.partition("=")
            overrides[key] = json.loads(value)
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            json.dumps(configs + [str(REPO / "configs/methods/none.json")]),
        ]
        for key, value in overrides.items():
            cmd += [f"--{key}", cli_value(value)]
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(run_dir / "train.log", "w") as log:
            subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
        minutes = (time.perf_counter() - start) / 60
        points = read_curve(run_dir / "eval" / "student_curve.csv")
        its, dice = [p[0] for p in points], [p[2] for p in points]
        params = student_params(configs, channels)
        curves[f"{spec} ({params:,} params)"] = (its, dice)
        best = max(range(len(dice)), key=dice.__getitem__)
        plateau = plateau_iteration(its, dice)
        rows.append((spec, params, dice[best], its[best], plateau, dice[-1], minutes))
        print(f"{spec}: best {dice[best]:.4f} at {its[best]}, plateau {plateau}, {minutes:.1f} min", flush=True)
    learning_curve_plot(curves, str(out / "curves.png"), title=f"none student, {Path(args.data).stem}")
    print(
        f"\n{args.data}, {epochs} epochs x {per_epoch} iterations, validation every {val_interval} epochs, "
        f"constant learning rate, seed {args.seed}"
    )
    print("| student channels | parameters | best val Dice | at iteration | plateau iteration | final Dice | minutes |")
    print("|---|---|---|---|---|---|---|")
    for spec, params, best, at, plateau, final, minutes in rows:
        print(f"| {spec} | {params:,} | {best:.4f} | {at} | {plateau or 'not reached'} | {final:.4f} | {minutes:.1f} |")
    print(f"\ncurves: {out / 'curves.png'}")


if __name__ == "__main__":
    main()
