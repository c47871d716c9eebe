"""Time and peak memory of FSD: the implicit Gram form against the explicit N x N form (CPU).

Each case runs in a fresh subprocess, which builds its inputs (teacher encoder/decoder features of
``(B, C_t, S, S)``, student ones of ``(B, C_s, S, S)``, encoder and decoder at the same size, so no
resizing and no pooling), records its peak RSS, runs forward + backward ``1 + repeats`` times and reports
the median time of the repeats and the growth of the peak RSS over the peak after building the inputs.
The naive form is skipped, and reported as "does not fit", where its estimated need (the ``B*N^2``
similarity matrices it keeps, times the factor measured on the largest naive case that ran) exceeds
``--budget-gib``.

Example::

    python benchmarks/bench_fsd_memory.py --sizes 32 64 96 128 512 --volume-sizes 96
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

FLOAT_BYTES = 4


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _worker(args: argparse.Namespace) -> None:
    """One case: print one JSON line with the median time and the peak memory growth."""
    import gc

    import torch

    from lightvessel_monai.losses.fsd import fsd_pair_loss

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = [args.size] * args.dims

    def feature(channels: int, student: bool) -> torch.Tensor:
        # filled in place: no temporary that would raise the baseline peak
        x = torch.empty(args.batch, channels, *shape).normal_()
        return x.requires_grad_(student)

    te, td = feature(args.teacher_channels, False), feature(args.teacher_channels, False)
    se, sd = feature(args.student_channels, True), feature(args.student_channels, True)
    gc.collect()
    baseline = _rss_peak_bytes()
    times = []
    for i in range(1 + args.repeats):
        start = time.perf_counter()
        loss = fsd_pair_loss(te, td, se, sd, implicit=args.form == "implicit")
        loss.backward()
        elapsed = time.perf_counter() - start
        if i > 0:  # the first run is a warm-up
            times.append(elapsed)
        se.grad = sd.grad = None
        del loss
    print(
        json.dumps(
            {
                "time_ms": 1000.0 * statistics.median(times),
                "extra_bytes": _rss_peak_bytes() - baseline,
                "baseline_bytes": baseline,
            }
        )
    )


def _run_case(args: argparse.Namespace, form: str, size: int, dims: int) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        form,
        "--size",
        str(size),
        "--dims",
        str(dims),
        "--batch",
        str(args.batch),
        "--teacher-channels",
        str(args.teacher_channels),
        "--student-channels",
        str(args.student_channels),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ)
    # the benchmark must import this checkout's package wherever it is started from
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt_bytes(n: float) -> str:
    if n >= 1e12:
        return f"{n / 1e12:.2f} TB"
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def _grid(size: int, dims: int) -> str:
    return "x".join([str(size)] * dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128, 512], help="2D grid sides")
    parser.add_argument("--volume-sizes", type=int, nargs="*", default=[96], help="3D grid sides (implicit only)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--teacher-channels", type=int, default=64)
    parser.add_argument("--student-channels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward+backward runs after one warm-up")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per case (default 1: stable timings on a shared machine; 0 = torch default)",
    )
    available = _mem_available_bytes()
    default_budget = 0.5 * available / 2**30 if available else 8.0
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=default_budget,
        help="skip a naive case whose estimated memory exceeds this (default: half of MemAvailable)",
    )
    parser.add_argument("--worker", choices=["implicit", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dims", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.form = args.worker
        _worker(args)
        return

    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(
        f"Machine: {platform.machine()} {platform.processor() or ''}, {cpus} CPUs usable "
        f"(os.cpu_count()={os.cpu_count()}), torch threads per case: "
        f"{args.threads if args.threads > 0 else torch.get_num_threads()}, "
        f"RAM {total / 2**30:.1f} GiB; Python {platform.python_version()}, torch {torch.__version__}"
    )
    print(
        f"Inputs: batch {args.batch}, teacher {args.teacher_channels} channels, student {args.student_channels} "
        f"channels, float32, encoder and decoder taps at the grid size (no resizing, no pooling); "
        f"forward+backward, median of {args.repeats} runs after 1 warm-up; peak RSS growth over the peak "
        f"after building the inputs, one fresh process per case; naive budget {args.budget_gib:.1f} GiB."
    )
    print()
    print(
        "| case | grid | N | time median (ms) | peak extra memory (MiB) | time naive/implicit | memory naive/implicit |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")

    factor = None  # naive peak growth per byte of one set of B x N x N similarity matrices, measured
    cases = [(size, 2) for size in args.sizes] + [(size, 3) for size in args.volume_sizes]
    for size, dims in cases:
        n = size**dims
        grid = _grid(size, dims)
        implicit = _run_case(args, "implicit", size, dims)
        if "error" in implicit:
            print(f"| implicit | {grid} | {n:,} | failed: {implicit['error']} | | | |")
            continue
        print(
            f"| implicit | {grid} | {n:,} | {implicit['time_ms']:.1f} | {implicit['extra_bytes'] / 2**20:.0f} | 1 | 1 |"
        )
        if dims != 2:
            continue
        sim_bytes = args.batch * n * n * FLOAT_BYTES  # one (B, N, N) float32 similarity matrix
        estimate = (factor or 6.0) * sim_bytes
        if estimate > args.budget_gib * 2**30:
            print(
                f"| naive | {grid} | {n:,} | does not fit | one (B, N, N) matrix is {_fmt_bytes(sim_bytes)}, "
                f"needs ~{_fmt_bytes(estimate)} | | ~{estimate / max(implicit['extra_bytes'], 1):,.0f} (est.) |"
            )
            continue
        naive = _run_case(args, "naive", size, dims)
        if "error" in naive:
            print(f"| naive | {grid} | {n:,} | failed: {naive['error']} | | | |")
            continue
        factor = max(naive["extra_bytes"] / sim_bytes, 1.0)
        print(
            f"| naive | {grid} | {n:,} | {naive['time_ms']:.1f} | {naive['extra_bytes'] / 2**20:.0f} "
            f"| {naive['time_ms'] / implicit['time_ms']:.1f} "
            f"| {naive['extra_bytes'] / max(implicit['extra_bytes'], 1):.1f} |"
        )
    print()
    print(
        f"Memory estimate of a skipped naive case: (measured peak growth / size of one (B, N, N) float32 matrix "
        f"on the largest naive case that ran = {factor if factor else 6.0:.2f}) x B x N^2 x 4 bytes."
    )


if __name__ == "__main__":
    main()
