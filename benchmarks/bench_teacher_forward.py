"""The teacher forward of a distillation step on the CPU: float32, onnxruntime, channels-last, bf16 autocast (issue 27).

    python benchmarks/bench_teacher_forward.py [--data configs/data/xca.json] [--patches 32] [--repeats 5]

One forward of the data overlay's ``teacher_def`` (random weights: the cost does not depend on them) on ``--patches``
patches of its ``patch_size``, without gradients, median of ``--repeats``; with the argmax agreement and the largest
softmax difference of each variant against float32. bfloat16 pays only on CPUs with bfloat16 instructions
(``avx512_bf16`` / AMX), which the table's header says. onnxruntime runs the teacher exported as the bundle exports
a student (``lightvessel_monai.export``'s opset, legacy exporter), with as many threads as torch.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def onnx_session(network: torch.nn.Module, example: torch.Tensor):
    import onnxruntime as ort

    from lightvessel_monai.export.formats import ONNX_OPSET

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            buffer,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "configs/data/xca.json"))
    ap.add_argument("--patches", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle/configs/train.json"), args.data])
    parser["bundle_root"] = str(REPO / "bundle")
    torch.manual_seed(0)
    teacher = parser.get_parsed_content("teacher_def").eval()
    x = torch.randn(args.patches, parser.get_parsed_content("in_channels"), *parser.get_parsed_content("patch_size"))
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").is_file() else ""
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bfloat16 instructions: {bf16}")
    print(f"teacher forward, {args.patches} patches of {'x'.join(map(str, x.shape[2:]))}, median of {args.repeats}\n")
    print("| variant | ms | vs float32 | argmax agreement | max softmax difference |")
    print("|---|---|---|---|---|")

    def autocast_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return teacher(x)

    with torch.no_grad():
        reference = teacher(x)
        base = median_ms(lambda: teacher(x), args.repeats)
        rows = [("float32", base, reference)]
        rows.append(("bfloat16 autocast", median_ms(autocast_bf16, args.repeats), autocast_bf16().float()))
        session = onnx_session(teacher, x)
        run_onnx = lambda: session.run(None, {"image": x.numpy()})[0]  # noqa: E731
        rows.append(("onnxruntime float32", median_ms(run_onnx, args.repeats), torch.from_numpy(run_onnx())))
        last = teacher.to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        rows.append(("float32 channels-last", median_ms(lambda: last(x_last), args.repeats), last(x_last)))
    for name, ms, out in rows:
        agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
        diff = float((out.softmax(1) - reference.softmax(1)).abs().max())
        print(f"| {name} | {ms:.0f} | {ms / base:.2f}x | {agree:.5f} | {diff:.4f} |")


if __name__ == "__main__":
    main()
