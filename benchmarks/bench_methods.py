"""Cost of one training iteration per distillation method, measured side by side in one process.

Every method is built from ``bundle/configs/train.json`` (+ an optional data overlay) +
``configs/methods/<name>.json`` exactly as the bundle builds it: the overlay's ``distillation`` terms (losses, weights
and handlers: critic updates, self-teacher), loss and optimiser (student + adapters/heads), in a
``DistillationTrainer`` that runs on one fixed in-memory batch. Methods are timed in interleaved rounds so that
machine noise hits them alike; the table gives the median time per iteration and its ratio to ``none`` (the student
alone), and where the iteration goes: the teacher forward, the student forward, the distillation terms' forward, the
critic update, and the rest (backward, optimiser step, segmentation loss, engine). Forward phases are timed by forward
hooks, the critic by wrapping its ``step``. The terms' own cost is their forward plus the backward they add: ``terms
fwd + (rest - rest of none)``; the last column compares it with the teacher forward.

    python benchmarks/bench_methods.py [--data configs/data/synthetic_3d.json] [--batch 16] [--rounds 5] [--steps 4]

``--unlabeled N`` appends N unlabelled patches (label -1) to the batch of every method that would use them (a teacher
or a term; ``none`` trains on the labelled patches alone, as the bundle does), and each method's own mixup
(``mixup_prob``, e.g. ``fm_kd``) runs in its ``prepare_batch``, as in training.

A method may carry config overrides, ``name+key=json+key=json``, to time variants side by side, e.g.
``--methods none,lightvessel,"lightvessel+critic_channels=[8,16,32,64]"``.
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

from lightvessel_monai.compare.runs import method_config, split_methods, split_variant
from lightvessel_monai.data.unlabeled import UNLABELED, labelled_samples
from lightvessel_monai.engines import DistillationTrainer, MixedBatch
from lightvessel_monai.handlers import AdversarialUpdateHandler

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundle" / "configs" / "train.json"
METHODS = ["none", "kd", "at", "cwd", "skd", "emkd", "dskd", "dskd_kd", "lightvessel"]


def build_trainer(spec: str, data: str | None, batches: list[dict], root: str):
    method, overrides = split_variant(spec)
    parser = ConfigParser()
    parser.read_config([str(TRAIN)] + ([data] if data else []) + [str(p) for p in method_config(method)])
    parser["bundle_root"] = root
    for key, value in overrides.items():
        parser[key] = value
    parser["device"] = "$torch.device('cpu')"
    parser["asd_warmup"] = 0

    use_teacher = parser.get_parsed_content("use_teacher")
    if not (use_teacher or parser.get_parsed_content("distillation")):
        batches = [{k: v[labelled_samples(b["label"])] for k, v in b.items()} for b in batches]  # as the bundle
    mix = MixedBatch(None, parser.get_parsed_content("mixup_prob"), parser.get_parsed_content("mixup_alpha"))
    trainer = DistillationTrainer(
        prepare_batch=mix,
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=parser.get_parsed_content("network"),
        optimizer=parser.get_parsed_content("optimizer"),
        loss_function=parser.get_parsed_content("loss"),
        teacher=parser.get_parsed_content("teacher") if use_teacher else None,
        teacher_taps=parser.get_parsed_content("teacher_taps"),
        student_taps=parser.get_parsed_content("student_taps"),
        distillation=parser.get_parsed_content("distillation"),
        teacher_precision=parser.get_parsed_content("teacher_precision"),
    )
    for name in ("monai.handlers.StatsHandler", trainer.logger.name):
        logging.getLogger(name).setLevel(logging.WARNING)
    return trainer


class PhaseTimer:
    """Accumulated wall time of module forwards (pre/post forward hooks) and of wrapped callables, per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def time_module(self, module: torch.nn.Module, phase: str) -> None:
        module.register_forward_pre_hook(lambda m, a: self._start.__setitem__(phase, time.perf_counter()))
        module.register_forward_hook(lambda m, a, o: self.add(phase, time.perf_counter() - self._start[phase]))

    def time_call(self, owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - start)

        setattr(owner, name, timed)  # an instance attribute: shadows the method for this object only


def instrument(trainer) -> PhaseTimer:
    timer = PhaseTimer()
    if trainer.teacher is not None:
        timer.time_module(trainer.teacher, "teacher")
    timer.time_module(trainer.network, "student")
    for distiller in trainer.distillers.values():
        timer.time_module(distiller, "terms")
    for handler in (h for term in trainer.terms.values() for h in term.handlers):
        if isinstance(handler, AdversarialUpdateHandler):
            timer.time_call(handler, "step", "critic")
    return timer


def time_epoch(trainer, timer: PhaseTimer, steps: int) -> dict[str, float]:
    """Milliseconds per iteration, in all and per phase, of one epoch of ``steps`` iterations."""
    timer.seconds = {}
    start = time.perf_counter()
    trainer.run()  # a finished engine restarts on ``run``
    total = time.perf_counter() - start
    phases = {k: v * 1000 / steps for k, v in timer.seconds.items()}
    phases["total"] = total * 1000 / steps
    phases["rest"] = phases["total"] - sum(phases.get(k, 0.0) for k in ("teacher", "student", "terms", "critic"))
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data overlay (default: the 2D synthetic angiograms)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", type=int, default=16, help="patches per iteration (the 2D default is 4 images x 4)")
    ap.add_argument("--unlabeled", type=int, default=0, help="unlabelled patches added to the batch (label -1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="iterations per method per round")
    args = ap.parse_args()
    torch.manual_seed(0)
    methods = split_methods(args.methods)

    probe = ConfigParser()
    probe.read_config([str(TRAIN)] + ([args.data] if args.data else []))
    in_channels, patch = probe.get_parsed_content("in_channels"), probe.get_parsed_content("patch_size")
    image = torch.rand(args.batch, in_channels, *patch)
    label = (torch.rand(args.batch, 1, *patch) > 0.9).float()
    if args.unlabeled:
        image = torch.cat([image, torch.rand(args.unlabeled, in_channels, *patch)])
        label = torch.cat([label, torch.full((args.unlabeled, 1, *patch), float(UNLABELED))])
    batch = {"image": image, "label": label}

    with tempfile.TemporaryDirectory() as root:
        trainers = {m: build_trainer(m, args.data, [batch] * args.steps, root) for m in methods}
        timers = {m: instrument(t) for m, t in trainers.items()}
        for trainer in trainers.values():  # warm-up: the first iterations allocate
            trainer.run()
        samples: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                samples[m].append(time_epoch(trainers[m], timers[m], args.steps))

    phases = ("total", "teacher", "student", "terms", "critic", "rest")
    med = {m: {p: statistics.median(r.get(p, 0.0) for r in rows) for p in phases} for m, rows in samples.items()}
    medians = {m: med[m]["total"] for m in methods}
    base = medians.get("none")
    rest_none = med["none"]["rest"] if "none" in med else None
    shape = "x".join(str(s) for s in patch)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"one iteration = {args.batch} patches of {shape} (+ {args.unlabeled} unlabelled, not for none); "
        f"median of {args.rounds} rounds x {args.steps} iterations\n"
    )
    print(
        "| method | ms / iteration | vs none | teacher fwd | student fwd | terms fwd | critic step | rest "
        "(backward, step, seg. loss) | terms in all | terms / teacher fwd |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        p = med[m]
        ratio = f"{medians[m] / base:.2f}x" if base else "-"
        terms = p["terms"] + p["critic"] + (p["rest"] - rest_none if rest_none is not None else 0.0)
        versus = f"{terms / p['teacher']:.2f}" if p["teacher"] > 0 and m != "none" else "-"
        print(
            f"| {m} | {p['total']:.0f} | {ratio} | {p['teacher']:.0f} | {p['student']:.0f} | {p['terms']:.0f} | "
            f"{p['critic']:.0f} | {p['rest']:.0f} | {terms if m != 'none' else 0:.0f} | {versus} |"
        )


if __name__ == "__main__":
    main()
