"""Framework overhead of one distillation step: DistillationTrainer vs. the same work in raw PyTorch.

The raw step is the sum of three separately timed parts:
  teacher forward (no grad) + student forward/loss (seg + FSD + ASD)/backward/step + one critic step.
The trainer step is one iteration of the bundle's DistillationTrainer with its AdversarialUpdateHandler,
on the same pre-built batch. Both are timed in alternating rounds in one process and reported as medians.

    python benchmarks/bench_overhead.py [--batch 8] [--size 128] [--rounds 7] [--steps 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from lightvessel_monai.engines import DistillationTrainer
from lightvessel_monai.handlers import AdversarialUpdateHandler
from lightvessel_monai.losses import DistillationInputs
from lightvessel_monai.taps import FeatureTaps

CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"


def build(parser: ConfigParser, name: str):
    return parser.get_parsed_content(name, instantiate=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    args = ap.parse_args()
    torch.manual_seed(0)

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["device"] = "$torch.device('cpu')"
    teacher, student = build(parser, "teacher_def"), build(parser, "network_def")
    fsd, asd = build(parser, "lightvessel#fsd#loss"), build(parser, "lightvessel#asd#loss")
    seg_loss, taps = build(parser, "loss"), parser.get_parsed_content("taps")
    weights = {"fsd": parser.get_parsed_content("fsd_weight"), "asd": parser.get_parsed_content("asd_weight")}
    asd.warmup_iterations = 0
    teacher.eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam(asd.discriminator.parameters(), lr=1e-4)
    handler = AdversarialUpdateHandler(asd, d_opt)

    image = torch.rand(args.batch, 1, args.size, args.size)
    label = (torch.rand(args.batch, 1, args.size, args.size) > 0.9).float()
    batch = {"image": image, "label": label}

    # --- raw PyTorch parts (same modules, hooks for the taps) ---
    t_taps, s_taps = FeatureTaps(teacher, taps), FeatureTaps(student, taps)

    def teacher_forward():
        with torch.no_grad():
            return teacher(image)

    t_pred = teacher_forward()
    t_feats = dict(t_taps.features)

    def student_step():
        opt.zero_grad()
        pred = student(image)
        inputs = DistillationInputs(image, label, pred, t_pred, s_taps.features, t_feats, iteration=10)
        loss = seg_loss(pred, label) + weights["fsd"] * fsd(inputs) + weights["asd"] * asd(inputs)
        loss.backward()
        opt.step()
        return pred.detach()

    s_pred = student_step()

    def critic_step():
        real, fake = asd.critic_inputs(label, t_pred, s_pred)
        handler.step(real, fake)

    def timed(fn, n):
        out = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    # both hook sets (raw and trainer) stay registered throughout, so each side pays for both equally
    # --- the trainer, one pre-built batch repeated ---
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=10**6,
        epoch_length=args.steps,
        train_data_loader=[batch] * args.steps,
        network=student,
        optimizer=opt,
        loss_function=seg_loss,
        teacher=teacher,
        teacher_taps=taps,
        student_taps=taps,
        distillation={
            "fsd": {"loss": fsd, "weight": weights["fsd"]},
            "asd": {"loss": asd, "weight": weights["asd"], "handlers": [handler]},
        },
    )
    trainer_times: list[float] = []
    marks: dict[str, float] = {}
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: marks.__setitem__("t", time.perf_counter()))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: trainer_times.append(time.perf_counter() - marks["t"])
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.terminate())

    parts = {"teacher forward": [], "student fwd/bwd/step": [], "critic step": []}
    timed(teacher_forward, 2), timed(student_step, 2), timed(critic_step, 2)  # warm-up
    for _ in range(args.rounds):
        parts["teacher forward"] += timed(teacher_forward, args.steps)
        parts["student fwd/bwd/step"] += timed(student_step, args.steps)
        parts["critic step"] += timed(critic_step, args.steps)
        trainer.state.max_epochs = trainer.state.epoch + 1 if trainer.state.epoch > 0 else 1
        trainer.should_terminate = False
        trainer.run()

    med = {k: statistics.median(v) * 1000 for k, v in parts.items()}
    raw = sum(med.values())
    step = statistics.median(trainer_times[args.steps :] or trainer_times) * 1000  # first round warms up
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"batch {args.batch} x 1 x {args.size}x{args.size}, {args.rounds} rounds x {args.steps} steps\n")
    print("| part | median (ms) |")
    print("|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| **sum of parts (raw PyTorch)** | **{raw:.1f}** |")
    print(f"| **DistillationTrainer iteration** | **{step:.1f}** |")
    print(f"\noverhead: {100 * (step / raw - 1):+.1f} % (target <= 10 %)")


if __name__ == "__main__":
    main()
