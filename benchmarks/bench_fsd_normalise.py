"""FSD's channel normalisation on the CPU: ``F.normalize`` against the rsqrt form it now uses, side by side.

For the XCA recipe's tap shapes (batch 16, teacher 32 channels at 48² and 64 at 24², student 4 and 8) the table
gives the median time of the normalisation alone and of one FSD pair loss (forward, and forward + backward) with
either normalisation, interleaved in rounds so that machine noise hits both alike.

    python benchmarks/bench_fsd_normalise.py [--threads 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F

from lightvessel_monai.losses import fsd
from lightvessel_monai.losses.fsd import fsd_pair_loss


def _f_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=1, eps=eps)


def _timed(fn, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) * 1000 / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=5, help="calls per timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = {
        "pair 1 (32/4 ch, 48²)": ((16, 32, 48, 48), (16, 4, 48, 48)),
        "pair 2 (64/8 ch, 24²)": ((16, 64, 24, 24), (16, 8, 24, 24)),
    }
    forms = {"F.normalize": _f_normalize, "rsqrt (now)": fsd.channel_l2_normalise}
    cases = {}
    for name, (t_shape, s_shape) in pairs.items():
        et, dt = torch.randn(t_shape), torch.randn(t_shape)
        es, ds = torch.randn(s_shape, requires_grad=True), torch.randn(s_shape, requires_grad=True)
        for form, norm in forms.items():

            def loss(et=et, dt=dt, es=es, ds=ds, norm=norm):
                with mock.patch.object(fsd, "channel_l2_normalise", norm):
                    return fsd_pair_loss(et, dt, es, ds)

            cases[(name, form, "normalise teacher feature")] = lambda et=et, norm=norm: norm(et)
            cases[(name, form, "pair loss forward")] = loss
            cases[(name, form, "pair loss forward + backward")] = lambda loss=loss: loss().backward()
    for fn in cases.values():  # warm-up
        fn()
    samples = {key: [] for key in cases}
    for _ in range(args.rounds):
        for key, fn in cases.items():
            samples[key].append(_timed(fn, args.repeats))
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print("| pair | what | F.normalize (ms) | rsqrt (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for name in pairs:
        for what in ("normalise teacher feature", "pair loss forward", "pair loss forward + backward"):
            old = statistics.median(samples[(name, "F.normalize", what)])
            new = statistics.median(samples[(name, "rsqrt (now)", what)])
            print(f"| {name} | {what} | {old:.2f} | {new:.2f} | {old / new:.1f}× |")


if __name__ == "__main__":
    main()
