"""Feature taps: read intermediate activations of an unmodified network by module path.

Taps are declared in config as ``{name: module_path}`` (the torchdistill idea), for example
``{"enc1": "conv_0", "dec1": "upcat_1"}`` for :class:`monai.networks.nets.BasicUNet`. A forward hook
stores the output of each module on every forward pass, so that distillers can read
``taps.features["enc1"]`` of shape ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lightvessel_monai.errors import ConfigKeyError

__all__ = ["FeatureTaps", "resolve_module", "check_taps", "tap_channels"]


def resolve_module(network: nn.Module, path: str, what: str = "tap") -> nn.Module:
    """Return ``network.get_submodule(path)``; a bad path raises a one-line error listing valid paths."""
    try:
        return network.get_submodule(path)
    except AttributeError:
        valid = [name for name, _ in network.named_modules() if name]
        close = difflib.get_close_matches(path, valid, n=6, cutoff=0.5)
        top = [name for name, _ in network.named_children()]
        hint = f"closest valid paths: {', '.join(close)}; " if close else ""
        raise ConfigKeyError(
            f"{what} path '{path}' does not exist in {type(network).__name__}; {hint}"
            f"top-level modules: {', '.join(top)} ({len(valid)} valid paths in all)"
        ) from None


def check_taps(
    network: nn.Module | None,
    taps: Mapping[str, str] | None,
    distillers: Mapping[str, nn.Module] | None = None,
    what: str = "student_taps",
) -> None:
    """Check before any training that every tap path exists and every distiller's required tap is declared."""
    if network is None:
        return
    taps = dict(taps or {})
    for name, path in taps.items():
        resolve_module(network, path, what=f"{what} '{name}'")
    attribute = "required_teacher_taps" if what.startswith("teacher") else "required_student_taps"
    for distiller_name, module in (distillers or {}).items():
        for tap in getattr(module, attribute, getattr(module, "required_taps", ())):
            if tap not in taps:
                raise ConfigKeyError(f"distiller '{distiller_name}' needs {what} '{tap}', declared: {sorted(taps)}")


def _first_tensor(output: object) -> torch.Tensor:
    """Modules may return tuples or lists (e.g. deep supervision); the first tensor is the feature."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"tapped module returned {type(output).__name__}, expected a tensor")
    return output


class FeatureTaps:
    """Forward hooks that record named module outputs of ``network``.

    Args:
        network: any ``nn.Module``; it is not modified apart from the registered hooks.
        taps: mapping of tap name to module path (as in ``network.named_modules()``).

    After each forward pass ``features[name]`` holds the module's output (with its autograd graph, so
    a loss on a student tap back-propagates into the student). Call :meth:`clear` to drop references
    and :meth:`remove` to detach the hooks.
    """

    def __init__(self, network: nn.Module, taps: Mapping[str, str] | None) -> None:
        self.network = network
        self.taps = dict(taps or {})
        self.features: dict[str, torch.Tensor] = {}
        modules = {name: resolve_module(network, path) for name, path in self.taps.items()}
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs: tuple, output: object) -> None:
            self.features[name] = _first_tensor(output)

        return store

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __len__(self) -> int:
        return len(self.taps)


def tap_channels(network: nn.Module, taps: Mapping[str, str] | None, input_shape: Sequence[int]) -> dict[str, int]:
    """Channel count of every tap, found with one forward pass of zeros of ``input_shape`` (``[1, C_in, *spatial]``).

    Lets a config size 1x1 adapters and side heads from the taps it declares, e.g.
    ``"$lightvessel_monai.features.tap_channels(@network, @student_taps, [1, @in_channels] + @patch_size)"``.
    The network's train/eval mode is restored afterwards.
    """
    taps = dict(taps or {})
    if not taps:
        return {}
    probe = FeatureTaps(network, taps)
    was_training = network.training
    try:
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        network.eval()
        with torch.no_grad():
            network(torch.zeros(*[int(s) for s in input_shape], device=device))
        return {name: int(probe.features[name].shape[1]) for name in taps}
    finally:
        probe.remove()
        network.train(was_training)
