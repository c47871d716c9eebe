"""Frames per second over a whole DICOM cine run, stage by stage, against the run's own frame rate and the teacher.

Stages, each timed over every frame of the run and reported per frame (medians over ``--rounds`` interleaved rounds,
after one warm-up round, so that machine noise hits them alike):

* decode: pydicom and its plugin (pylibjpeg-libjpeg for JPEG Lossless) decode every frame;
* field: the run's exposed field, once per run (median frame, shutter);
* preprocess: the XCA overlay's preprocessing per frame (smooth fill, scale, CLAHE, inversion and standardisation,
  fill), as ``inference.json``'s ``cine`` runs it;
* network: the student on ``--batch`` frames per call and on one frame per call, in PyTorch eager, TorchScript
  (``torch.jit.script``) and onnxruntime, through the same whole-frame ``SlidingWindowInferer``; the teacher
  (``teacher_def``) in eager and TorchScript;
* postprocess: softmax, class, background outside the field, on the batch;
* write: the DICOM SEG (highdicom), the PNG masks and the GIF preview, into a temporary folder.

The pipeline rows add the stages up (decode + field + preprocess + network + postprocess + write; with each
network), and ``CineInference.run()`` — the real ``cine`` of ``inference.json``, with ``cine_engine`` and
``cine_batch_size`` as configured — is timed end to end on the same run. Ratios are to the run's frame rate
(``CineRate``, or 1000 / ``FrameTime``).

    python benchmarks/bench_cine.py [--run ../shared/data/XA_DICOM_phantom_cine/IM1] [--threads 2] [--rounds 5]
        [--batch 8] [--checkpoint /work/runs/ul27/none_s1/models/model_final.pt] [--teacher_checkpoint PATH]

Without ``--checkpoint`` (or when the file is absent) the student has seeded random weights: timings do not depend
on the weights. The load average is printed before and after: on a shared machine the figures are pessimistic.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.cine.frames import grey_frames
from lightvessel_monai.cine.pipeline import whole_frame_inferer
from lightvessel_monai.cine.staging import StagedOutputs
from lightvessel_monai.data.xa_dicom import read_frames
from lightvessel_monai.export import export_onnx
from lightvessel_monai.files import markdown_table

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "bundle" / "configs" / "inference.json", REPO / "configs" / "data" / "xca.json"]
DEFAULT_RUN = REPO.parent / "shared" / "data" / "XA_DICOM_phantom_cine" / "IM1"
DEFAULT_CHECKPOINT = Path("/work/runs/ul27/none_s1/models/model_final.pt")


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _scripted(network: torch.nn.Module) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(network)


def _onnx(network: torch.nn.Module, folder: str, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    path = Path(folder) / "student.onnx"
    export_onnx(network, path, example)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(DEFAULT_RUN), help="a multi-frame XA DICOM file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8], help="frames per network call")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="student state dict (XCA network_def)")
    ap.add_argument("--teacher_checkpoint", default=None, help="teacher state dict (XCA teacher_def)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="bench_cine_"))
    parser = ConfigParser()
    parser.read_config([str(c) for c in CONFIGS])
    parser["output_dir"], parser["ckpt_dir"], parser["input_glob"] = str(work / "out"), str(work), args.run
    trained = Path(args.checkpoint).is_file()
    torch.manual_seed(0)
    student = parser.get_parsed_content("network_def").eval()
    if trained:
        load_state_dict_checked(student, args.checkpoint, "student")
    torch.save(student.state_dict(), work / "model.pt")  # what the pipeline loads (ckpt_dir/model.pt)
    cine = parser.get_parsed_content("cine")
    run = cine.runs[0]
    teacher = parser.get_parsed_content("teacher_def").eval()
    if args.teacher_checkpoint:
        load_state_dict_checked(teacher, args.teacher_checkpoint, "teacher")

    header, frames = read_frames(run)
    grey = grey_frames(frames, run.bits_stored)
    field = cine.frames.run_field(header, grey)
    items = [cine.frames(run, k, frame, field) for k, frame in enumerate(grey)]
    images = torch.stack([item["image"].as_tensor() for item in items])

    def forward(model: Callable, batch: int) -> Callable[[], torch.Tensor]:
        inferer = whole_frame_inferer(images.shape[2:], cine.window_multiple, batch)

        def call() -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([inferer(images[i : i + batch], model) for i in range(0, len(images), batch)])

        return call

    with tempfile.TemporaryDirectory() as tmp:
        student_ts, teacher_ts = _scripted(student), _scripted(teacher)
        student_ort = _onnx(student, tmp, images[:1])
        networks = {
            f"student {engine}, {batch} per call": forward(model, batch)
            for engine, model in (("eager", student), ("TorchScript", student_ts), ("onnxruntime", student_ort))
            for batch in args.batches
        }
        best = min(args.batches, key=lambda b: abs(b - cine.batch_size))
        for engine, model in (("eager", teacher), ("TorchScript", teacher_ts)):
            networks[f"teacher {engine}, {best} per call"] = forward(model, best)
        pred = networks[f"student eager, {args.batches[0]} per call"]()
        masks = (cine.labels(pred, items).numpy()).transpose(0, 2, 1)

        def write() -> None:
            with StagedOutputs(Path(tmp) / "out") as outputs:
                cine.write(outputs, run, header, frames, masks)

        stages: dict[str, Callable[[], object]] = {
            "decode": lambda: read_frames(run),
            "field (once per run)": lambda: cine.frames.run_field(header, grey),
            "preprocess": lambda: [cine.frames(run, k, frame, field) for k, frame in enumerate(grey)],
            **networks,
            "postprocess": lambda: cine.labels(pred, items),
            "write (SEG, PNGs, GIF)": write,
            "whole pipeline: CineInference.run()": cine.run,
        }
        times: dict[str, list[float]] = {name: [] for name in stages}
        for round_index in range(args.rounds + 1):
            for name, call in stages.items():
                seconds, _ = _timed(call)
                if round_index:  # the first round warms up (TorchScript's profiling runs, caches, the fill plan)
                    times[name].append(seconds / run.frames)
    load_after = os.getloadavg()

    per_frame = {name: statistics.median(values) for name, values in times.items()}
    rate = run.frame_rate or float("nan")
    fixed = sum(per_frame[k] for k in ("decode", "field (once per run)", "preprocess", "postprocess"))
    fixed += per_frame["write (SEG, PNGs, GIF)"]
    rows = []
    for name, seconds in per_frame.items():
        rows.append((name, f"{seconds * 1e3:.1f}", f"{1 / seconds:.1f}", f"{1 / seconds / rate:.2f}"))
    for name in networks:
        total = fixed + per_frame[name]
        label = f"sum of stages with the {name}"
        rows.append((label, f"{total * 1e3:.1f}", f"{1 / total:.1f}", f"{1 / total / rate:.2f}"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    print(
        f"run: {run.describe()}; student weights: {args.checkpoint if trained else 'random (seed 0)'}; "
        f"teacher weights: {args.teacher_checkpoint or 'random'}; {args.rounds} rounds after 1 warm-up, medians"
    )
    print(f"pipeline as configured: cine_engine {cine.engine}, cine_batch_size {cine.batch_size}")
    print()
    header_row = ["stage", "ms per frame", "frames per second", f"x the run's {rate:g} fps"]
    print("\n".join(markdown_table(header_row, rows)))


if __name__ == "__main__":
    main()
