"""TorchScript and ONNX files of a segmentation network, with dynamic batch and spatial axes.

Both exports take the network in eval mode and an example input ``(1, C, H, W)`` in 2D or ``(1, C, D, H, W)`` in 3D
(a size the network accepts: for MONAI's ``UNet`` with strides 2, a multiple of ``2 ** len(strides)``). The files are
written atomically (a temporary file, then a rename), and each export is checked on the example input: the written
model must reproduce the network's logits within ``atol``, or the file is removed and the call fails.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightvessel_monai.errors import LightVesselError
from lightvessel_monai.files import atomic_write

__all__ = ["export_torchscript", "export_onnx", "onnx_predict", "max_abs_difference", "ExportMismatchError"]

logger = logging.getLogger(__name__)

ONNX_OPSET = 18


class ExportMismatchError(LightVesselError):
    """An exported model does not reproduce the network it was exported from."""


def max_abs_difference(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """``max |a - b|`` over all elements, in float64."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise ExportMismatchError(f"exported output shape {tuple(b.shape)} differs from the network's {tuple(a.shape)}")
    return float((a - b).abs().max())


@torch.no_grad()
def _reference(network: nn.Module, example: torch.Tensor) -> torch.Tensor:
    network.eval()
    return network(example)


def _check(path: Path, expected: torch.Tensor, actual: torch.Tensor | np.ndarray, atol: float, what: str) -> float:
    diff = max_abs_difference(expected, actual)
    if not diff <= atol:
        path.unlink(missing_ok=True)
        raise ExportMismatchError(f"{what} {path} differs from the network by {diff:.3g} (max abs) > {atol:g}; removed")
    return diff


def export_torchscript(network: nn.Module, path: str | os.PathLike, example: torch.Tensor, atol: float = 1e-5) -> float:
    """Script (``torch.jit.script``, as MONAI's ``ckpt_export``) and save ``network``; returns the max abs difference
    of the saved module's output from the network's on ``example``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    expected = _reference(network, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, but it is the Zoo's format
        scripted = torch.jit.script(network)
        atomic_write(path, lambda f: torch.jit.save(scripted, f))
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        actual = loaded(example)
    return _check(path, expected, actual, atol, "TorchScript file")


def export_onnx(
    network: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    dynamic_spatial: bool = True,
    atol: float = 1e-4,
    opset: int = ONNX_OPSET,
) -> float:
    """Export ``network`` to ONNX (input ``image``, output ``pred``; batch and, with ``dynamic_spatial``, every spatial
    axis dynamic) and check it with onnxruntime on ``example``; returns the max abs difference."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    expected = _reference(network, example)
    spatial = range(2, example.ndim)
    axes = {0: "batch", **({d: f"spatial_{d - 2}" for d in spatial} if dynamic_spatial else {})}
    buffer = io.BytesIO()  # exported in memory: a network that cannot be exported leaves no file behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            buffer,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": axes, "pred": axes},
            opset_version=opset,
            dynamo=False,
        )
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return _check(path, expected, onnx_predict(path, example), atol, "ONNX file")


def onnx_predict(path: str | os.PathLike, image: torch.Tensor | np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run an exported ONNX model on the CPU with onnxruntime: ``image`` ``(B, C, *spatial)`` -> logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return session.run(["pred"], {"image": array.astype(np.float32)})[0]


def example_input(in_channels: int, spatial_shape: Sequence[int]) -> torch.Tensor:
    """A deterministic example input ``(1, in_channels, *spatial_shape)`` in ``[0, 1)``."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, int(in_channels), *[int(s) for s in spatial_shape]), generator=generator)
