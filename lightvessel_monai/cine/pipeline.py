"""Segment DICOM cine runs with the bundle's student: decode, preprocess each frame, the network, post-process, write.

Per run (``inference.json``'s ``cine``, run before the PNG evaluator):

1. decode every frame (pydicom and its plugins, :func:`~lightvessel_monai.data.xa_dicom.read_frames`);
2. the run's exposed field once, then the config's ``preprocessing`` per frame (:class:`.frames.FramePipeline`);
3. the network on ``batch_size`` frames per call: a MONAI ``SlidingWindowInferer`` whose one window is the frame,
   padded by edge replication to a multiple of ``window_multiple`` (the networks' downsampling), as XCA's
   inference pads a 300 x 300 angiogram into its 320 x 320 window (the default, one frame per call, was the fastest
   for the 25 k XCA student on this project's 2-core CPU: benchmarks/bench_cine.py);
4. on the batch, what the config's ``post_transforms`` do per image (softmax over the classes, the first most probable
   class, background outside ``mask_key``): the masks MONAI Label and the PNG path get. The class is taken with
   ``max(dim).indices`` (the same first-maximum rule as ``argmax``): ``torch.argmax`` over the class axis of a
   (2, 512, 512) map took 45 ms on this CPU, ``max`` 4.7 ms;
5. the DICOM SEG, a PNG mask per frame and an animated GIF, into ``<output_dir>/<run name>/``
   (:class:`.staging.StagedOutputs`: no run's outputs appear until every run is done; an error leaves nothing).

The student's weights are loaded with ``torch.load(..., weights_only=True)`` and checked against the network
(:func:`lightvessel_monai.checkpoints.load_state_dict_checked`) before anything is written.
``engine="torchscript"`` runs the network as ``torch.jit.script`` makes it (what MONAI's ``ckpt_export`` writes
to ``models/model.ts``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import convert_to_tensor
from torch import nn

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.cine.frames import FramePipeline, grey_frames
from lightvessel_monai.cine.preview import write_gif, write_png_masks
from lightvessel_monai.cine.seg import cine_segmentation
from lightvessel_monai.cine.staging import StagedOutputs
from lightvessel_monai.data.xa_dicom import CineRun, read_frames
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.files import atomic_write
from lightvessel_monai.pipeline.settings import check_positive_ints

__all__ = ["CineInference", "ENGINES", "whole_frame_inferer"]

ENGINES = ("eager", "torchscript")

logger = logging.getLogger(__name__)


def whole_frame_inferer(shape: Sequence[int], multiple: int = 16, batch_size: int = 1) -> SlidingWindowInferer:
    """One window per frame of ``shape`` (rounded up to ``multiple``, edges replicated), ``batch_size`` per call."""
    roi = [multiple * math.ceil(int(s) / multiple) for s in shape]
    return SlidingWindowInferer(roi, sw_batch_size=batch_size, overlap=0.0, padding_mode="replicate")


class CineInference:
    """Segment every cine run in ``runs``; ``run()`` returns the folders written.

    Args:
        runs: checked runs (``inference.json``'s ``input_files.runs``).
        network: the student (``network`` of the config), on ``device``.
        preprocessing: the config's ``preprocessing``.
        mask_key: the preprocessing's field-of-view key (``prediction_mask_key``): the label is background outside
            it; ``None`` for none.
        checkpoint: the student's state dict file.
        output_dir: where each run's folder goes.
        device: where the network runs.
        batch_size: frames per network call.
        window_multiple: the frame is padded to a multiple of this (the networks' total downsampling, or more).
        engine: ``"eager"`` (PyTorch) or ``"torchscript"``.
        algorithm: the name written into the SEG's algorithm identification.
    """

    def __init__(
        self,
        runs: Sequence[CineRun],
        network: nn.Module,
        preprocessing: Callable,
        checkpoint: str,
        output_dir: str,
        mask_key: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        window_multiple: int = 16,
        engine: str = "eager",
        algorithm: str = "LightVessel-MONAI student",
    ) -> None:
        check_positive_ints({"cine_batch_size": batch_size, "cine_window_multiple": window_multiple})
        if engine not in ENGINES:
            raise ConfigKeyError(f"config key 'cine_engine' must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.runs = list(runs)
        self.network, self.checkpoint, self.engine = network, checkpoint, engine
        self.frames = FramePipeline(preprocessing)
        self.mask_key = mask_key
        self.output_dir, self.device = output_dir, torch.device(device)
        self.batch_size, self.window_multiple, self.algorithm = batch_size, window_multiple, algorithm
        self.model: Callable | None = None  # the loaded network, as run (eager or scripted)
        self.timings: list[dict[str, float]] = []  # per run: seconds per stage (read by benchmarks/bench_cine.py)

    def load(self) -> Callable:
        """Load the checkpoint into the network (checked, ``weights_only``), in eval mode, scripted if asked."""
        load_state_dict_checked(self.network, self.checkpoint, what="student")
        self.network.eval()
        if self.engine == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; it is the Zoo's format
                self.model = torch.jit.script(self.network)
        else:
            self.model = self.network
        return self.model

    def labels(self, pred: torch.Tensor, items: Sequence[dict]) -> torch.Tensor:
        """``pred`` ``(B, C, W, H)`` logits to class maps ``(B, W, H)`` uint8, background outside ``mask_key``."""
        labels = torch.softmax(pred, dim=1).max(dim=1).indices
        if self.mask_key is not None:
            missing = [i for i, item in enumerate(items) if self.mask_key not in item]
            if missing:
                raise ConfigKeyError(f"prediction_mask_key '{self.mask_key}' is not in the preprocessed frames")
            inside = torch.stack([convert_to_tensor(item[self.mask_key], track_meta=False)[0] > 0 for item in items])
            inside = inside.to(labels.device)
            labels = torch.where(inside, labels, torch.zeros((), dtype=labels.dtype, device=labels.device))
        return labels.to(torch.uint8)

    def segment(self, run: CineRun, frames: np.ndarray, header: Any) -> np.ndarray:
        """The masks ``(T, H, W)`` uint8 (0/1) of the decoded ``frames`` ``(T, H, W)``; stage times in
        ``self.timings[-1]``."""
        times = self.timings[-1]
        start = time.perf_counter()
        grey = grey_frames(frames, run.bits_stored)
        field = self.frames.run_field(header, grey)
        items = [self.frames(run, k, frame, field) for k, frame in enumerate(grey)]
        times["preprocess"] = time.perf_counter() - start
        inferer = whole_frame_inferer(items[0]["image"].shape[1:], self.window_multiple, self.batch_size)
        masks = np.empty((run.frames, run.rows, run.columns), dtype=np.uint8)
        network_s = post_s = 0.0
        with torch.no_grad():
            for first in range(0, len(items), self.batch_size):
                batch = items[first : first + self.batch_size]
                t0 = time.perf_counter()
                images = torch.stack([convert_to_tensor(item["image"], track_meta=False) for item in batch])
                images = images.to(self.device)
                pred = inferer(images, self.model).cpu()
                t1 = time.perf_counter()
                labels = self.labels(pred, batch).numpy()
                masks[first : first + len(batch)] = labels.transpose(0, 2, 1)  # MONAI's (W, H) to rows x columns
                t2 = time.perf_counter()
                network_s, post_s = network_s + t1 - t0, post_s + t2 - t1
        times["network"], times["postprocess"] = network_s, post_s
        return masks

    def write(self, outputs: StagedOutputs, run: CineRun, header: Any, frames: np.ndarray, masks: np.ndarray) -> None:
        """The run's DICOM SEG, PNG masks and GIF preview, into its staged folder."""
        from lightvessel_monai import __version__

        folder = outputs.folder(run.name)
        seg = cine_segmentation(header, masks, algorithm=self.algorithm, version=__version__)
        atomic_write(folder / f"{run.name}_seg.dcm", lambda f: seg.save_as(f, enforce_file_format=True))
        write_png_masks(folder, run.name, masks)
        write_gif(folder / f"{run.name}_preview.gif", grey_frames(frames, run.bits_stored), masks, run.frame_rate)

    def run(self) -> list[str]:
        """Segment and write every run; the network is loaded on the first call (a second call reuses it)."""
        if not self.runs:
            return []
        if self.model is None:
            self.load()
        self.timings = []
        with StagedOutputs(self.output_dir) as outputs:
            for run in self.runs:
                t0 = time.perf_counter()
                header, frames = read_frames(run)
                t1 = time.perf_counter()
                self.timings.append({"decode": t1 - t0})
                masks = self.segment(run, frames, header)
                t2 = time.perf_counter()
                self.write(outputs, run, header, frames, masks)
                times = self.timings[-1]
                times["write"] = time.perf_counter() - t2
                total = time.perf_counter() - t0
                times["total"] = total
                fps = run.frames / total
                rate = f", {fps / run.frame_rate:.2f}x its {run.frame_rate:g} fps" if run.frame_rate else ""
                logger.info(f"{run.name}: {run.frames} frames in {total:.2f} s ({fps:.1f} fps{rate})")
            return outputs.commit()
