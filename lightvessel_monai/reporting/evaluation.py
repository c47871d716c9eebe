"""Held-out evaluation of one segmentation network: per-case metrics, model size, FLOPs and CPU latency."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.data import decollate_batch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import AsDiscrete
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightvessel_monai.data.transforms import mask_outside
from lightvessel_monai.metrics.segmentation import segmentation_metrics

__all__ = ["count_flops", "cpu_latency_ms", "evaluate_cases", "mean_over_cases", "summarise"]


@torch.no_grad()
def count_flops(network: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations of one forward pass on an input of ``input_shape`` (with batch), counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2; convolutions and matmuls only)."""
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = network.training
    network.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            network(torch.zeros(*[int(s) for s in input_shape], device=device))
        return int(counter.get_total_flops())
    finally:
        network.train(was_training)


@torch.no_grad()
def evaluate_cases(
    network: nn.Module,
    dataloader: Iterable,
    device: str | torch.device = "cpu",
    inferer: Inferer | None = None,
    num_classes: int = 2,
    mask_key: str | None = None,
    keep_predictions: int = 0,
    prediction_mask_key: str | None = None,
) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """Metrics of every case of ``dataloader`` (softmax head, argmax), inside ``batch[mask_key]`` when given.

    ``prediction_mask_key`` is part of the model's own post-processing, as in inference: the prediction is set to
    background outside ``batch[prediction_mask_key]`` (XCA's exposed field) and the metrics still count every pixel.
    ``mask_key`` restricts the metrics themselves (DRIVE's FOV: prediction and label both).

    Returns ``(rows, predictions)``: one dict of :func:`~lightvessel_monai.metrics.segmentation.segmentation_metrics`
    per case, and the argmax label maps (``(H, W)`` or ``(D, H, W)`` uint8) of the first ``keep_predictions`` cases.
    """
    inferer = inferer or SimpleInferer()
    network.eval().to(device)
    to_pred, to_label = AsDiscrete(argmax=True, to_onehot=num_classes), AsDiscrete(to_onehot=num_classes)
    rows: list[dict[str, float]] = []
    kept: list[np.ndarray] = []
    for batch in dataloader:
        image, label = batch["image"].to(device), batch["label"].to(device)
        logits = inferer(image, network)
        masks = decollate_batch(batch[mask_key]) if mask_key else [None] * len(logits)
        fields = decollate_batch(batch[prediction_mask_key]) if prediction_mask_key else [None] * len(logits)
        cases = zip(decollate_batch(logits), decollate_batch(label), masks, fields, strict=True)
        for logit, lab, mask, field in cases:
            pred = to_pred(logit)
            if field is not None:
                pred = mask_outside(pred, torch.as_tensor(field).to(device), one_hot=True)
            if len(kept) < keep_predictions:
                kept.append(pred.argmax(0).cpu().numpy().astype(np.uint8))
            mask = None if mask is None else (torch.as_tensor(mask) > 0).to(device)
            rows.append(
                segmentation_metrics(pred[None], to_label(lab)[None], mask=None if mask is None else mask[None])
            )
    return rows, kept


def summarise(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) over finite values; std is 0 for a single value and nan when none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def mean_over_cases(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-metric mean over cases (non-finite values, e.g. HD95 of an empty prediction, are left out)."""
    keys = list(rows[0]) if rows else []
    return {key: summarise([row[key] for row in rows])[0] for key in keys}


@torch.no_grad()
def cpu_latency_ms(
    network: nn.Module, input_shape: Sequence[int], repeats: int = 10, warmup: int = 2, threads: int | None = None
) -> float:
    """Median wall time (ms) of one forward pass on the CPU for an input of ``input_shape`` (with batch)."""
    network = copy.deepcopy(network).cpu().eval()
    x = torch.randn(*input_shape)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            network(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            network(x)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)
