"""End-of-run comparison of teacher and distilled student: Dice, size and CPU latency."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.files import atomic_write_text, csv_text, markdown_table
from lightvessel_monai.networks import count_parameters
from lightvessel_monai.reporting.evaluation import cpu_latency_ms, evaluate_cases, mean_over_cases

__all__ = ["evaluate_dice", "write_report", "RunReport"]

logger = logging.getLogger(__name__)


def evaluate_dice(
    network: nn.Module,
    dataloader: Iterable,
    device: str | torch.device = "cpu",
    inferer: Inferer | None = None,
    num_classes: int = 2,
    mask_key: str | None = None,
    prediction_mask_key: str | None = None,
) -> float:
    """Mean foreground Dice over cases (softmax head, argmax), inside ``batch[mask_key]`` when given; the prediction
    is background outside ``batch[prediction_mask_key]`` when given (see :func:`evaluate_cases`)."""
    rows, _ = evaluate_cases(
        network, dataloader, device, inferer, num_classes, mask_key=mask_key, prediction_mask_key=prediction_mask_key
    )
    return mean_over_cases(rows)["dice"]


def write_report(
    networks: dict[str, nn.Module],
    checkpoints: Mapping[str, str | None],
    dataloader: Iterable,
    output_dir: str,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    inferer: Inferer | None = None,
    num_classes: int = 2,
    latency_repeats: int = 10,
    printer: Callable[[str], None] = print,
    mask_key: str | None = None,
    sources: Mapping[str, str] | None = None,
    prediction_mask_key: str | None = None,
) -> list[dict]:
    """Evaluate each network's best checkpoint and write ``report.md`` and ``report.csv`` to ``output_dir``.

    Args:
        networks: ``{"teacher": ..., "student": ...}``; they are copied, not modified.
        checkpoints: the state-dict file to evaluate for a network; a network without one (the teacher, which the
            teacher stage has loaded) is evaluated with the weights it holds.
        sources: where an in-memory network's weights came from, for the ``checkpoint`` column.
        dataloader: validation data (batches with ``image`` and ``label``).
        input_shape: shape of one input for the latency measurement, e.g. ``(1, 1, 512, 512)``.
        mask_key: batch key of a region of interest (the DRIVE field of view); Dice is computed inside it.
        prediction_mask_key: batch key of the exposed field (XCA); predictions are background outside it.
    """
    rows = []
    for name, network in networks.items():
        model = copy.deepcopy(network)
        checkpoint = checkpoints.get(name)
        if checkpoint is not None:
            load_state_dict_checked(model, checkpoint, what=name)
        dice = evaluate_dice(model, dataloader, device, inferer, num_classes, mask_key, prediction_mask_key)
        rows.append(
            {
                "model": name,
                "dice": round(dice, 4),
                "params": count_parameters(model),
                "cpu_latency_ms": round(cpu_latency_ms(model, input_shape, repeats=latency_repeats), 1),
                "checkpoint": checkpoint or (sources or {}).get(name, "in memory"),
            }
        )
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(os.path.join(output_dir, "report.csv"), csv_text(rows))
    shape, threads = "x".join(str(s) for s in input_shape[2:]), torch.get_num_threads()
    header = ["model", "Dice", "parameters", f"median CPU latency, one {shape} image (ms, {threads} threads)"]
    cells = ([r["model"], f"{r['dice']:.4f}", f"{r['params']:,}", f"{r['cpu_latency_ms']:.1f}"] for r in rows)
    table = "\n".join(markdown_table(header, cells))
    atomic_write_text(os.path.join(output_dir, "report.md"), table + "\n")
    printer(table)
    return rows


class RunReport:
    """The last step of the bundle's ``run``: :meth:`write` evaluates the networks and writes the report.

    It holds the arguments of :func:`write_report` (``networks``, ``checkpoints``, ``dataloader``, ``output_dir``,
    ``input_shape`` and the keyword arguments), so that the config names the report once and ``run`` says when
    it is written.
    """

    def __init__(
        self,
        networks: dict[str, nn.Module],
        checkpoints: Mapping[str, str | None],
        dataloader: Iterable,
        output_dir: str,
        input_shape: Sequence[int],
        **kwargs: Any,
    ) -> None:
        self.networks = networks
        self.checkpoints = checkpoints
        self.dataloader = dataloader
        self.output_dir = output_dir
        self.input_shape = input_shape
        self.kwargs = kwargs

    def write(self) -> list[dict]:
        return write_report(
            self.networks, self.checkpoints, self.dataloader, self.output_dir, self.input_shape, **self.kwargs
        )
