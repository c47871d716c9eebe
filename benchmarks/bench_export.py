"""Student CPU latency in PyTorch eager, TorchScript and onnxruntime, side by side in one process.

Each student is exported with ``lightvessel_monai.export`` (TorchScript and ONNX with dynamic spatial axes), the ONNX
output is compared with PyTorch's on the real-sized input (max abs difference), and the three runtimes are timed in
interleaved rounds on that input, so that machine noise hits them alike. The table gives the median latency of each,
its ratio to eager, and the ONNX difference.

    python benchmarks/bench_export.py [--threads 2] [--rounds 7]

Students: the XCA/DRIVE student (MONAI UNet 4-8-16-32, 2 residual units) on a 512x512 image, the synthetic-2D
default (BasicUNet 8-16-32-64-96-8) on 512x512, and the 3D student (UNet 12-24-48-96, 1 residual unit) on a 96^3 patch.
Weights are random (seed 0): latency does not depend on them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.networks.nets import BasicUNet, UNet

from lightvessel_monai.export import export_onnx, export_torchscript, max_abs_difference
from lightvessel_monai.export.formats import example_input
from lightvessel_monai.files import markdown_table
from lightvessel_monai.networks import count_parameters

STUDENTS = {
    "UNet 4-8-16-32 (XCA, DRIVE), 512x512": (
        lambda: UNet(2, 1, 2, (4, 8, 16, 32), (2, 2, 2), num_res_units=2),
        (512, 512),
    ),
    "BasicUNet 8..96 (synthetic 2D), 512x512": (
        lambda: BasicUNet(2, 1, 2, features=(8, 16, 32, 64, 96, 8)),
        (512, 512),
    ),
    "UNet 12-24-48-96 (3D), 96^3": (lambda: UNet(3, 1, 2, (12, 24, 48, 96), (2, 2, 2), num_res_units=1), (96, 96, 96)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime "
        f"{ort.__version__}, {args.threads} threads, {args.rounds} interleaved rounds after 1 warm-up"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, shape) in STUDENTS.items():
            torch.manual_seed(0)
            network = build().eval()
            x = example_input(1, shape)
            onnx_path, ts_path = Path(tmp) / "m.onnx", Path(tmp) / "m.ts"
            onnx_diff = export_onnx(network, onnx_path, x)
            export_torchscript(network, ts_path, x)
            scripted = torch.jit.load(str(ts_path))
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            array = x.numpy()
            runners = {
                "eager": lambda n=network, i=x: n(i),
                "TorchScript": lambda n=scripted, i=x: n(i),
                "onnxruntime": lambda s=session, a=array: s.run(["pred"], {"image": a}),
            }
            times = {k: [] for k in runners}
            with torch.no_grad():
                for run in runners.values():
                    run()  # warm-up
                for _ in range(args.rounds):
                    for key, run in runners.items():
                        start = time.perf_counter()
                        run()
                        times[key].append((time.perf_counter() - start) * 1000)
                assert max_abs_difference(network(x), session.run(["pred"], {"image": array})[0]) == onnx_diff
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((name, count_parameters(network), med, onnx_diff))
    print()
    header = ["student, input", "parameters", "eager ms", "TorchScript ms (x eager)", "onnxruntime ms (x eager)"]
    cells = []
    for name, params, med, diff in rows:
        e, ts, ort_ms = med["eager"], med["TorchScript"], med["onnxruntime"]
        cells.append([name, f"{params:,}", f"{e:.1f}", f"{ts:.1f} ({ts / e:.2f})", f"{ort_ms:.1f} ({ort_ms / e:.2f})"])
        cells[-1].append(f"{diff:.2g}")
    print("\n".join(markdown_table([*header, "ONNX max abs diff"], cells)))


if __name__ == "__main__":
    main()
