"""Cost of one training step (forward, backward, AdamW) per candidate network, patch size, batch and memory format.

Usage::

    python benchmarks/bench_recipe.py [--threads 2] [--repeats 15]

Prints one Markdown table: parameters, median ms per step and patches per second, measured side by side in one
process (same threads, same random data). This is the profile behind the teacher and student recipe of the 2D data
overlays (``configs/data/xca.json``, ``configs/data/drive.json``); figures in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet, UNet

from lightvessel_monai.networks import count_parameters


def unet(channels: tuple[int, ...], res_units: int) -> torch.nn.Module:
    return UNet(2, 1, 2, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=res_units)


CANDIDATES = {
    "UNet 8-16-32-64, 2 res": lambda: unet((8, 16, 32, 64), 2),
    "UNet 12-24-48-96, 2 res": lambda: unet((12, 24, 48, 96), 2),
    "UNet 16-32-64-128, 2 res": lambda: unet((16, 32, 64, 128), 2),
    "UNet 32-64-128-256, 2 res": lambda: unet((32, 64, 128, 256), 2),
    "UNet 32-64-128-256-512, 2 res": lambda: unet((32, 64, 128, 256, 512), 2),
    "BasicUNet 8-16-32-64-96-8": lambda: BasicUNet(2, 1, 2, features=(8, 16, 32, 64, 96, 8)),
    "BasicUNet 24-48-96-192-384-24": lambda: BasicUNet(2, 1, 2, features=(24, 48, 96, 192, 384, 24)),
}


def step_ms(network: torch.nn.Module, batch: int, patch: int, repeats: int, channels_last: bool) -> float:
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(network.parameters(), lr=1e-3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=fmt).train()
    x = torch.randn(batch, 1, patch, patch).to(memory_format=fmt)
    y = (torch.rand(batch, 1, patch, patch) > 0.9).float()
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        loss.backward()
        opt.step()
        if i >= 2:  # the first two steps allocate
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated substrings of candidate names to keep")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    keep = [s for s in args.only.split(",") if s]
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} steps")
    print("| network | parameters | patch | batch | memory format | ms / step | patches / s |")
    print("|---|---|---|---|---|---|---|")
    settings = [(96, 16, False), (128, 16, False), (96, 16, True), (64, 32, False)]
    for name, make in CANDIDATES.items():
        if keep and not any(k in name for k in keep):
            continue
        for patch, batch, cl in settings:
            torch.manual_seed(0)
            net = make()
            ms = step_ms(net, batch, patch, args.repeats, cl)
            fmt = "channels_last" if cl else "contiguous"
            rate = batch / ms * 1000
            row = f"| {name} | {count_parameters(net):,} | {patch}² | {batch} | {fmt} | {ms:.0f} | {rate:.0f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
