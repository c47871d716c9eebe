"""Data wait vs. compute per training iteration of the 3D distillation (CacheDataset + DataLoader from the config).

The bundle's ``DistillationTrainer`` is built from ``bundle/configs/train.json`` + ``configs/data/synthetic_3d.json``
(``train#trainer``, with its ``train#dataset`` CacheDataset and ``train#dataloader``) on a small synthetic CT set
written to a temporary ``bundle_root``, on the CPU. Validation is switched off (``val_interval`` huge), as are the
progress bar and resume checkpoints. The teacher stage is skipped by pointing ``teacher_checkpoint`` at a
randomly initialised teacher (the teacher's weights do not change the timing), unless ``--train-teacher``.

Per iteration, ignite events give
  data wait = GET_BATCH_STARTED -> GET_BATCH_COMPLETED (next(dataloader): random crops/flips of cached volumes, collate)
  compute   = ITERATION_STARTED -> ITERATION_COMPLETED (prepare_batch, teacher + student forward, losses, backward,
              optimiser step, and the ITERATION_COMPLETED handlers registered before ours, e.g. the critic step).

    python benchmarks/bench_data_pipeline.py [--epochs 3] [--num-train 16] [--num-workers 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.utils import set_determinism

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [str(ROOT / "bundle" / "configs" / "train.json"), str(ROOT / "configs" / "data" / "synthetic_3d.json")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--num-train", type=int, default=16, help="synthetic training volumes")
    ap.add_argument("--num-val", type=int, default=2, help="synthetic validation volumes (built, never run)")
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: config)")
    ap.add_argument("--train-teacher", action="store_true", help="run the teacher stage (1 epoch) instead")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # StatsHandler & co. log per iteration

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        parser = ConfigParser()
        parser.read_config(CONFIGS)
        overrides = {
            "bundle_root": tmp,
            "device": "$torch.device('cpu')",
            "synthetic#num_train": args.num_train,
            "synthetic#num_val": args.num_val,
            "max_epochs": args.epochs,
            "val_interval": 10**6,
            "progress_bar": False,
            "resume": False,
            "teacher_train#settings#max_epochs": 1,
        }
        if args.num_workers is not None:
            overrides["num_workers"] = args.num_workers
        teacher_ckpt = os.path.join(tmp, "teacher_random.pt")
        if not args.train_teacher:  # (a trained teacher is validated once at its end, which writes its checkpoint)
            overrides["teacher_checkpoint"] = teacher_ckpt
        for key, value in overrides.items():
            parser[key] = value
        if not args.train_teacher:
            torch.manual_seed(0)
            torch.save(parser.get_parsed_content("teacher_def", instantiate=True).state_dict(), teacher_ckpt)

        set_determinism(seed=parser["seed"])
        start = time.perf_counter()
        dataset = parser.get_parsed_content("train#dataset")  # writes the synthetic set, fills the cache
        t_cache = time.perf_counter() - start
        start = time.perf_counter()
        parser.get_parsed_content("teacher_stage").ensure()  # with --train-teacher: trains the teacher here
        trainer = parser.get_parsed_content("train#trainer")
        t_build = time.perf_counter() - start
        loader = parser.get_parsed_content("train#dataloader")

        marks: dict[str, float] = {}
        waits: dict[int, list[float]] = {}
        computes: dict[int, list[float]] = {}

        def mark(name):
            return lambda engine: marks.__setitem__(name, time.perf_counter())

        def record(store, name):
            def handler(engine):
                store.setdefault(engine.state.epoch, []).append(time.perf_counter() - marks[name])

            return handler

        trainer.add_event_handler(Events.GET_BATCH_STARTED, mark("get"))
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, record(waits, "get"))
        trainer.add_event_handler(Events.ITERATION_STARTED, mark("iter"))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, record(computes, "iter"))
        start = time.perf_counter()
        trainer.run()
        t_run = time.perf_counter() - start

    patch = parser["patch_size"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ", end="")
    print(f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, python {platform.python_version()}")
    print(
        f"{len(dataset)} cached training volumes {parser['synthetic']['shape']}, batch_size {parser['batch_size']} "
        f"x {parser['samples_per_image']} patches {patch}, DataLoader num_workers {loader.num_workers}"
    )
    print(
        f"student {parser['network_def']['_target_']}, teacher {parser['teacher_def']['_target_']} "
        f"{parser['teacher_def'].get('features', '')}"
        f" ({'trained 1 epoch' if args.train_teacher else 'random weights, teacher stage skipped'})"
    )
    print(f"CacheDataset fill: {t_cache:.1f} s, trainer build: {t_build:.1f} s, {args.epochs} epochs: {t_run:.1f} s")
    print()
    print("| epoch | iterations | median data wait (ms) | median compute (ms) | data share (%) |")
    print("|---|---|---|---|---|")
    shares = {}
    for epoch in sorted(computes):
        w, c = waits[epoch], computes[epoch]
        shares[epoch] = 100 * sum(w) / (sum(w) + sum(c))
        med_w, med_c = statistics.median(w) * 1000, statistics.median(c) * 1000
        print(f"| {epoch} | {len(c)} | {med_w:.1f} | {med_c:.1f} | {shares[epoch]:.1f} |")
    print("\ndata share = total data wait / (total data wait + total compute) in the epoch")
    later = [s for e, s in shares.items() if e > 1]
    if later:
        verdict = "met" if max(later) < 10 else "NOT met"
        print(f"target: data wait < 10 % after the first epoch -> {verdict} (max {max(later):.1f} % in epochs 2+)")


if __name__ == "__main__":
    main()
