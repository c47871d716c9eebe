"""Sliding-window inference of one 3D volume on the CPU: teacher vs. student vs. TorchScript student.

The networks and the ``inferer`` (roi, sw_batch_size, overlap, gaussian blending) come from the bundle config with
the 3D overlay (``bundle/configs/train.json`` + ``configs/data/synthetic_3d.json``); the input is one random
1-channel volume (default 256x256x128). Each model lives in its own fresh worker subprocess, so that its peak
memory can be read from ``ru_maxrss``: peak RSS growth is reported over the RSS right after building the model
and the input. The parent asks the workers for one timed inference each in turn (alternating, after one warm-up
each) and reports the medians.

    python benchmarks/bench_sliding_window.py [--size 256 256 128] [--roi 48 48 32] [--repeats 3]
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
from pathlib import Path

import torch
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [str(ROOT / "bundle" / "configs" / "train.json"), str(ROOT / "configs" / "data" / "synthetic_3d.json")]
MODELS = ("teacher", "student", "student (TorchScript)")


def current_rss_kib() -> int:
    """Resident set size of this process now, in KiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def load_parser(roi: list[int] | None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser["device"] = "$torch.device('cpu')"
    if roi is not None:
        parser["inferer#roi_size"] = roi
    return parser


def build_model(parser: ConfigParser, name: str) -> tuple[torch.nn.Module, str]:
    """The network for ``name`` in eval mode, and a note on how it was compiled."""
    key = "teacher_def" if name == "teacher" else "network_def"
    net = parser.get_parsed_content(key, instantiate=True).eval()
    if "TorchScript" not in name:
        return net, "eager"
    try:
        return torch.jit.script(net), "torch.jit.script"
    except Exception as e:  # BasicUNet should script; fall back to tracing if this MONAI version does not
        print(f"torch.jit.script failed ({type(e).__name__}: {e}); using torch.jit.trace", file=sys.stderr)
        roi = parser.get_parsed_content("inferer#roi_size")
        return torch.jit.trace(net, torch.rand(1, 1, *roi)), "torch.jit.trace"


def worker(args: argparse.Namespace) -> None:
    """Build one model and the input, then run one timed inference per ``run`` line read from stdin."""
    torch.manual_seed(0)
    parser = load_parser(args.roi)
    net, how = build_model(parser, args.worker)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    params = sum(p.numel() for p in net.parameters())
    image = torch.rand(1, 1, *args.size)
    baseline = current_rss_kib()
    info = {
        "how": how,
        "params": params,
        "roi": list(inferer.roi_size),
        "sw_batch_size": inferer.sw_batch_size,
        "overlap": inferer.overlap,
        "mode": str(inferer.mode),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        with torch.no_grad():
            out = inferer(image, net)
        elapsed = time.perf_counter() - start
        assert out.shape == (1, parser["num_classes"], *args.size), out.shape
        del out
        extra_mib = (peak_rss_kib() - baseline) / 1024
        print(json.dumps({"time": elapsed, "peak_extra_mib": extra_mib}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[256, 256, 128], help="volume size (H W D)")
    ap.add_argument("--roi", type=int, nargs=3, default=None, help="sliding-window roi (default: config patch_size)")
    ap.add_argument("--repeats", type=int, default=3, help="timed inferences per model (after 1 warm-up)")
    ap.add_argument("--worker", choices=MODELS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args)
        return

    base = [sys.executable, __file__, "--size", *map(str, args.size)]
    if args.roi is not None:
        base += ["--roi", *map(str, args.roi)]
    procs, info = {}, {}
    for name in MODELS:  # all workers start and build first; they are idle (blocked on stdin) while others run
        procs[name] = subprocess.Popen(
            [*base, "--worker", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        info[name] = json.loads(procs[name].stdout.readline())

    def ask(name: str) -> dict:
        procs[name].stdin.write("run\n")
        procs[name].stdin.flush()
        return json.loads(procs[name].stdout.readline())

    times: dict[str, list[float]] = {name: [] for name in MODELS}
    peaks: dict[str, float] = {name: 0.0 for name in MODELS}
    total = time.perf_counter()
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up
        for name in MODELS:
            res = ask(name)
            peaks[name] = max(peaks[name], res["peak_extra_mib"])
            if round_ > 0:
                times[name].append(res["time"])
            tag = "warm-up" if round_ == 0 else f"repeat {round_}"
            print(f"  {tag:>9} {name:<22} {res['time']:7.2f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - total
    for p in procs.values():
        p.stdin.close()
        p.wait()

    first = info[MODELS[0]]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ", end="")
    print(f"{first['threads']} torch threads, torch {torch.__version__}, python {platform.python_version()}")
    print(
        f"input 1x1x{'x'.join(map(str, args.size))}, SlidingWindowInferer roi {first['roi']}, "
        f"sw_batch_size {first['sw_batch_size']}, overlap {first['overlap']}, mode {first['mode']}"
    )
    print(f"{args.repeats} timed repeats per model after 1 warm-up, alternating models; total {total:.0f} s")
    print("compiled student: " + info["student (TorchScript)"]["how"])
    for name in MODELS:
        print(f"params {name}: {info[name]['params']:,}")
    print()
    print("| model | params | median time (s) | peak extra memory (MiB) | speed-up vs teacher |")
    print("|---|---|---|---|---|")
    t_teacher = statistics.median(times["teacher"])
    for name in MODELS:
        med = statistics.median(times[name])
        print(f"| {name} | {info[name]['params']:,} | {med:.2f} | {peaks[name]:.0f} | {t_teacher / med:.2f}x |")
    best = max(t_teacher / statistics.median(times[n]) for n in MODELS[1:])
    verdict = "met" if best >= 5 else "NOT met"
    print(f"\ntarget: student >= 5x faster than teacher -> {verdict} (best student speed-up {best:.2f}x)")


if __name__ == "__main__":
    main()
