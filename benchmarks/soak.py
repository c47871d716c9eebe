"""Soak test: the main distillation on the built-in 2D data for a long time, sampled for leaks (Linux, /proc).

The teacher is trained (or reused) first in the same bundle folder; then the distillation runs with a very large
``max_epochs`` and, every ``--interval`` seconds, the script samples the training process: the median time per
iteration over the interval (from MONAI's per-iteration ``StatsHandler`` lines), its resident memory (RSS), its open
file descriptors and the size of the output folder. After ``--minutes`` the run is stopped (SIGTERM) and the script
prints a table, the RSS growth after the first epoch (median of the first against the last quarter of the samples)
and the file-descriptor growth, and writes ``soak.csv`` and ``soak.png`` under ``--output_dir``.

    python benchmarks/soak.py --minutes 30 --output_dir runs/soak
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundle" / "configs" / "train.json"
ITERATION = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+)")


def command(root: Path, max_epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN),
        "--bundle_root", str(root), "--max_epochs", str(max_epochs), "--progress_bar", "False",
    ]  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


class IterationClock:
    """Reads the child's log in a thread and keeps (time, epoch) of every training iteration it reports."""

    def __init__(self, stream) -> None:
        self.stamps: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            match = ITERATION.search(line)
            if match:
                self.stamps.append((time.monotonic(), int(match.group(1))))

    def since(self, start: float) -> list[tuple[float, int]]:
        return [s for s in self.stamps if s[0] >= start]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--output_dir", default="runs/soak")
    args = parser.parse_args()
    out = Path(args.output_dir).resolve()
    root = out / "bundle"
    root.mkdir(parents=True, exist_ok=True)

    print("teacher stage (trained once, or reused from the cache) ...", flush=True)
    subprocess.run(command(root, 1), cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = subprocess.Popen(
        command(root, 100_000), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    clock = IterationClock(proc.stdout)
    rows: list[dict] = []
    start = time.monotonic()
    last = start
    try:
        while time.monotonic() - start < args.minutes * 60 and proc.poll() is None:
            time.sleep(args.interval)
            now = time.monotonic()
            window = [t for t, _ in clock.since(last)]
            gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
            epoch = clock.stamps[-1][1] if clock.stamps else 0
            rows.append(
                {
                    "seconds": round(now - start),
                    "epoch": epoch,
                    "iterations": len(window),
                    "iteration_ms": round(1000 * statistics.median(gaps), 1) if gaps else float("nan"),
                    "rss_mb": round(rss_mb(proc.pid), 1),
                    "open_fds": open_fds(proc.pid),
                    "output_mb": round(folder_mb(root), 2),
                }
            )
            print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
            last = now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if not rows:
        raise SystemExit("the training process ended before the first sample")

    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # RSS swings by a few hundred MB within an epoch (validation's sliding window): compare the median of the first
    # and of the last quarter of the samples taken after the first epoch, and report the extremes as well
    after_first = [r for r in rows if r["epoch"] >= 2] or rows
    quarter = max(1, len(after_first) // 4)
    early = statistics.median(r["rss_mb"] for r in after_first[:quarter])
    late = statistics.median(r["rss_mb"] for r in after_first[-quarter:])
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {len(rows)} samples")
    print("| seconds | epoch | iteration ms (median) | RSS MB | open fds | output MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['seconds']} | {r['epoch']} | {r['iteration_ms']} | {r['rss_mb']} | {r['open_fds']} | "
            f"{r['output_mb']} |"
        )
    print(
        f"\nRSS after epoch 1, median of the first quarter: {early:.1f} MB, of the last quarter: {late:.1f} MB "
        f"({100 * (late - early) / early:+.1f} %); range {min(r['rss_mb'] for r in after_first)}-"
        f"{max(r['rss_mb'] for r in after_first)} MB"
    )
    print(f"open fds: first {rows[0]['open_fds']}, largest {max(r['open_fds'] for r in rows)}")
    print(f"output folder: {rows[0]['output_mb']} MB -> {rows[-1]['output_mb']} MB")
    plot(rows, out / "soak.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["seconds"] / 60 for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, key, label in zip(
        axes,
        ["iteration_ms", "rss_mb", "open_fds", "output_mb"],
        ["iteration time, median (ms)", "RSS (MB)", "open file descriptors", "output folder (MB)"],
        strict=True,
    ):
        ax.plot(minutes, [r[key] for r in rows], marker=".")
        ax.set_xlabel("minutes of distillation")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
