"""The GPU check: the main distillation with AMP off and on, the critic on the GPU, DDP, and FSD at full size.

Run it anywhere; on a machine without CUDA it prints "no GPU" and exits 0::

    python benchmarks/gpu_check.py                 # on a CUDA machine: about 300 student iterations per case
    python benchmarks/gpu_check.py --epochs 60     # longer cases

Each training case is the real command, ``python -m monai.bundle run training`` (``torchrun`` for DDP), of the
bundle's main job (LightVessel, FSD + ASD, on the built-in synthetic angiograms) in a fresh process, with one extra
overlay that makes every rank write its statistics (iterations, training seconds, peak GPU memory, final losses,
the critic's device) to ``<output_dir>/gpu_check_rank<k>.json``. The teacher is trained by the first case and
reused by the others (its training time is not counted). Validation runs once, at the end, inside the timed run.

The FSD rows time the implicit similarity loss (forward + backward, median of ``--repeats``) on teacher/student
features of the sizes where the explicit ``N x N`` form cannot run: 512² (batch 4) and 96³ (batch 1), in float32 and
under autocast, with the peak GPU memory of the step.

``--allow-cpu`` runs the same cases on the CPU (AMP is then inactive: the trainer's autocast is CUDA's) with DDP on
two gloo processes; it checks the machinery, its numbers are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"

STATS = (
    "$open(@output_dir + '/gpu_check_rank' + os.environ.get('RANK', '0') + '.json', 'w').write(json.dumps({"
    "'iterations': @train#trainer.state.iteration, "
    "'seconds': @train#trainer.state.times['COMPLETED'], "
    "'batch_size': @batch_size * @samples_per_image, "
    "'world_size': int(os.environ.get('WORLD_SIZE', '1')), "
    "'peak_mib': torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None, "
    "'losses': {k: float(v) for k, v in @train#trainer.state.output.items() if k.startswith('loss')}, "
    "'device': str(@device), "
    "'critic_device': str(next(@lightvessel#asd#loss.discriminator.parameters()).device)}))"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_case(name: str, workdir: Path, args: argparse.Namespace, amp: bool, nproc: int) -> dict:
    """One training case in a fresh process; returns rank 0's statistics (and the ranks' iterations).

    ``nproc`` 0: plain ``python -m monai.bundle``; ``nproc`` >= 1: ``torchrun`` with the multi-GPU overlay (DDP also
    with a single GPU).
    """
    root = workdir / name
    stats_overlay = workdir / "stats.json"
    stats_overlay.write_text(json.dumps({"+imports": ["$import json"], "+run": [STATS]}))
    configs = [CONFIGS / "train.json"]
    if nproc >= 1:
        configs.append(CONFIGS / "multi_gpu_train.json")
    configs.append(stats_overlay)
    overrides = {
        "bundle_root": root,
        "dataset_dir": workdir / "data",
        "teacher_dir": workdir / "teacher",
        "amp": amp,
        "max_epochs": args.epochs,
        "val_interval": args.epochs,
        "teacher_max_epochs": args.teacher_epochs,
        "progress_bar": False,
        "latency_repeats": 1,
        **dict(kv.split("=", 1) for kv in args.set),
    }
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = ["-m", "monai.bundle", "run", "training", "--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    if nproc >= 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
        cmd = [*launcher, "--master_port", str(_free_port()), *cmd]
    else:
        cmd = [sys.executable, *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"gpu_check: case '{name}' failed ({proc.returncode}):\n{tail}")
    ranks = [json.loads((root / "eval" / f"gpu_check_rank{k}.json").read_text()) for k in range(max(nproc, 1))]
    stats = dict(ranks[0])
    stats["wall_seconds"] = wall
    stats["rank_iterations"] = [r["iterations"] for r in ranks]
    return stats


def _fsd_case(
    spatial: tuple[int, ...], batch: int, channels: tuple[int, int], device: torch.device, amp: bool, repeats: int
):
    """Median forward+backward time (ms) and peak memory (MiB) of FSD on one (encoder, decoder) pair."""
    from lightvessel_monai.losses import FeatureSimilarityDistillation
    from lightvessel_monai.losses.base import DistillationInputs

    torch.manual_seed(0)
    c_t, c_s = channels
    shape_t, shape_s = (batch, c_t, *spatial), (batch, c_s, *spatial)
    teacher = {k: torch.randn(shape_t, device=device) for k in ("enc1", "dec1")}
    student_leaf = {k: torch.randn(shape_s, device=device, requires_grad=True) for k in ("enc1", "dec1")}
    fsd = FeatureSimilarityDistillation([["enc1", "dec1"]])
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            # under autocast the features arrive in half precision, as they would from the networks' convolutions
            student = {k: (v.to(dtype) if amp else v) for k, v in student_leaf.items()}
            tfeat = {k: (v.to(dtype) if amp else v) for k, v in teacher.items()}
            inputs = DistillationInputs(None, None, None, None, student, tfeat)
            loss = fsd(inputs)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
    return statistics.median(times[1:]), peak, float(loss.detach())


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="student epochs per case (10 iterations each)")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10, help="FSD timing repeats")
    parser.add_argument("--fsd-sizes", default="512,96", help="2D side and 3D side of the FSD rows")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (a check of the machinery)")
    parser.add_argument("--set", action="append", default=[], help="extra bundle override KEY=VALUE (repeatable)")
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no GPU (torch.cuda.is_available() is False): nothing to check on this machine")
        return 0
    device = torch.device("cuda:0" if cuda else "cpu")
    ngpus = torch.cuda.device_count() if cuda else 2
    name = torch.cuda.get_device_name(0) if cuda else "CPU (machinery check; AMP inactive)"
    print(f"gpu_check on {name}; torch {torch.__version__}; {ngpus} {'GPU(s)' if cuda else 'gloo processes'}")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        cases = [("distil fp32", False, 0), ("distil amp", True, 0), (f"distil amp DDP x{ngpus}", True, ngpus)]
        rows = []
        for case, amp, nproc in cases:
            s = _run_case(case.replace(" ", "_"), workdir, args, amp, nproc)
            images = s["iterations"] * s["batch_size"] * s["world_size"] / s["seconds"]
            losses = " ".join(f"{k[5:] or 'total'}={v:.3f}" for k, v in sorted(s["losses"].items()))
            rows.append(
                f"| {case} | {s['iterations']} per rank | {s['iterations'] / s['seconds']:.1f} | {images:.1f} "
                f"| {_fmt(s['peak_mib'], '.0f')} | {s['critic_device']} | {losses} |"
            )
        print()
        print(
            "| case | iterations | it/s (per rank) | patches/s (all ranks) | peak GPU MiB | critic on | final losses |"
        )
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))

    side2, side3 = (int(v) for v in args.fsd_sizes.split(","))
    fsd_rows = []
    for label, spatial, batch in ((f"{side2}²", (side2, side2), 4), (f"{side3}³", (side3, side3, side3), 1)):
        for amp in (False, True):
            ms, peak, value = _fsd_case(spatial, batch, (24, 8), device, amp, args.repeats)
            precision = "amp" if amp else "fp32"
            row = (
                f"| FSD {label}, batch {batch}, 24/8 ch | {precision} | {ms:.1f} | {_fmt(peak, '.0f')} | {value:.5f} |"
            )
            fsd_rows.append(row)
    print()
    print("| FSD case | precision | median ms (fwd+bwd) | peak GPU MiB | loss |")
    print("|---|---|---|---|---|")
    print("\n".join(fsd_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
