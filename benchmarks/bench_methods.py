"""Cost of one training iteration per distillation method, measured side by side in one process.

Every method is built from ``bundle/configs/train.json`` (+ an optional data overlay) + ``configs/methods/<name>.json``
exactly as the bundle builds it: the overlay's distillers, weights, loss, optimiser (student + adapters/heads) and
``method_handlers`` (critic updates, self-teacher), in a ``DistillationTrainer`` that runs on one fixed in-memory
batch. Methods are timed in interleaved rounds so that machine noise hits them alike; the table gives the median
time per iteration and its ratio to ``none`` (the student alone).

    python benchmarks/bench_methods.py [--data configs/data/synthetic_3d.json] [--batch 16] [--rounds 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from lightvessel_monai.handlers import HandlerGroup

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundle" / "configs" / "train.json"
METHODS = ["none", "kd", "at", "cwd", "skd", "emkd", "dskd", "dskd_kd", "lightvessel"]


def build_trainer(method: str, data: str | None, batches: list[dict], root: str):
    parser = ConfigParser()
    parser.read_config([str(TRAIN)] + ([data] if data else []) + [str(REPO / "configs" / "methods" / f"{method}.json")])
    parser["bundle_root"] = root
    parser["device"] = "$torch.device('cpu')"
    parser["asd_warmup"] = 0
    from lightvessel_monai.engines import DistillationTrainer

    use_teacher = parser.get_parsed_content("use_teacher")
    trainer = DistillationTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=parser.get_parsed_content("network"),
        optimizer=parser.get_parsed_content("optimizer"),
        loss_function=parser.get_parsed_content("loss"),
        teacher=parser.get_parsed_content("teacher") if use_teacher else None,
        teacher_taps=parser.get_parsed_content("teacher_taps"),
        student_taps=parser.get_parsed_content("student_taps"),
        distillers=parser.get_parsed_content("distillers"),
        distiller_weights=parser.get_parsed_content("distiller_weights"),
        train_handlers=[HandlerGroup(parser.get_parsed_content("method_handlers"))],
    )
    for name in ("StatsHandler", trainer.logger.name):
        logging.getLogger(name).setLevel(logging.WARNING)
    return trainer


def time_epoch(trainer, steps: int) -> float:
    """Seconds per iteration of one epoch of ``steps`` iterations (a finished engine restarts on ``run``)."""
    start = time.perf_counter()
    trainer.run()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data overlay (default: the 2D synthetic angiograms)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", type=int, default=16, help="patches per iteration (the 2D default is 4 images x 4)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="iterations per method per round")
    args = ap.parse_args()
    torch.manual_seed(0)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    probe = ConfigParser()
    probe.read_config([str(TRAIN)] + ([args.data] if args.data else []))
    in_channels, patch = probe.get_parsed_content("in_channels"), probe.get_parsed_content("patch_size")
    image = torch.rand(args.batch, in_channels, *patch)
    label = (torch.rand(args.batch, 1, *patch) > 0.9).float()
    batch = {"image": image, "label": label}

    with tempfile.TemporaryDirectory() as root:
        trainers = {m: build_trainer(m, args.data, [batch] * args.steps, root) for m in methods}
        for trainer in trainers.values():  # warm-up: the first iterations allocate
            trainer.run()
        samples: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                samples[m].append(time_epoch(trainers[m], args.steps))

    medians = {m: statistics.median(v) * 1000 for m, v in samples.items()}
    base = medians.get("none")
    shape = "x".join(str(s) for s in patch)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"one iteration = {args.batch} patches of {shape}; median of {args.rounds} rounds x {args.steps} iterations\n"
    )
    print("| method | ms / iteration | vs none |")
    print("|---|---|---|")
    for m in methods:
        ratio = f"{medians[m] / base:.2f}x" if base else "-"
        print(f"| {m} | {medians[m]:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
