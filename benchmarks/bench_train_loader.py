"""Milliseconds per training batch of the 2D data pipeline (``train#dataloader``), before and after its fixes.

Usage::

    python benchmarks/bench_train_loader.py [--data configs/data/xca.json] [--rounds 5]

Variants, each a set of overrides of ``bundle/configs/train.json`` + the data overlay, timed in interleaved rounds
(one epoch each) in one process, median per batch:

* ``nested Compose``: the training Compose holds the preprocessing Compose as its first item. A Compose counts as
  random, so ``CacheDataset`` cached nothing and every batch re-read and re-preprocessed its files (the old config).
* ``flat``: the preprocessing transforms are spliced into the training Compose, so their output is cached.
* ``+ crop indices``: ``FgBgToIndicesd`` runs once in the cached part; ``RandCropByPosNegLabeld`` reads the indices
  instead of recomputing them for every image.
* ``+ no cache copy``: ``copy_cache: false``; the random transforms never write into the cached arrays (the crops
  are views that the later transforms replace), so the per-item deep copy is not needed. The current default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
NESTED = "$[@preprocessing] + @train_augmentation"
FLAT = "$list(@preprocessing.transforms) + @train_augmentation"
VARIANTS = {
    "nested Compose (before)": {"train#preprocessing#transforms": NESTED, "train#dataset#copy_cache": True},
    "flat": {"train#preprocessing#transforms": FLAT, "train#dataset#copy_cache": True},
    "+ crop indices": {"train#dataset#copy_cache": True},
    "+ no cache copy (default)": {},
}


def loader(data: str, overrides: dict, root: str):
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle" / "configs" / "train.json"), data])
    parser["bundle_root"] = root
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("train#dataloader")


def epoch_ms_per_batch(dl) -> float:
    start, n = time.perf_counter(), 0
    for _ in dl:
        n += 1
    return (time.perf_counter() - start) * 1000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "configs" / "data" / "xca.json"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        loaders = {name: loader(args.data, o, root) for name, o in VARIANTS.items()}
        for dl in loaders.values():
            epoch_ms_per_batch(dl)  # fills the caches
        samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, dl in loaders.items():
                samples[name].append(epoch_ms_per_batch(dl))
        batch = next(iter(loaders["flat"]))["image"].shape
    print(
        f"{Path(args.data).name}: batches of {tuple(batch)} (full batches), {torch.get_num_threads()} threads, "
        f"median of {args.rounds} epochs"
    )
    print("| pipeline | ms / batch | vs before |")
    print("|---|---|---|")
    before = statistics.median(samples["nested Compose (before)"])
    for name, values in samples.items():
        ms = statistics.median(values)
        print(f"| {name} | {ms:.0f} | {before / ms:.1f}x faster |")


if __name__ == "__main__":
    main()
