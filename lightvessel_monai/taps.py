"""Feature taps: read intermediate activations of an unmodified network by module path.

Taps are declared in config as ``{name: module_path}`` (the torchdistill idea), for example
``{"enc1": "conv_0", "dec1": "upcat_1"}`` for :class:`monai.networks.nets.BasicUNet`. A forward hook
stores the output of each module on every forward pass, so that distillers can read
``taps.features["enc1"]`` of shape ``(B, C, H, W)`` in 2D or ``(B, C, D, H, W)`` in 3D.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from lightvessel_monai.errors import ConfigKeyError

__all__ = ["FeatureTaps", "InputTap", "resolve_module", "check_taps", "tap_channels"]


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
    required: Mapping[str, Iterable[str]] | None = None,
    side: Literal["student", "teacher"] = "student",
) -> None:
    """Check before any training that every tap path exists and that the ``side`` taps every term needs are declared.

    ``required`` is ``{term: taps it reads on this side}``, as
    :meth:`~lightvessel_monai.losses.DistillationMethod.required_taps` gives it (the method's pre-flight calls this).
    Errors are one line and name the config key (``student_taps`` or ``teacher_taps``).
    """
    if side not in ("student", "teacher"):
        raise ValueError(f"side must be 'student' or 'teacher', got {side!r}")
    if network is None:
        return
    key = f"{side}_taps"
    taps = dict(taps or {})
    for name, path in taps.items():
        resolve_module(network, path, what=f"{key} '{name}'")
    for term, needed in (required or {}).items():
        for tap in needed:
            if tap not in taps:
                raise ConfigKeyError(f"distillation term '{term}' needs {key} '{tap}', declared: {sorted(taps)}")


def _first_tensor(output: object) -> torch.Tensor:
    """Modules may return tuples or lists (e.g. deep supervision); the first tensor is the feature."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"tapped module returned {type(output).__name__}, expected a tensor")
    return output


class _TapHook:
    """The forward hook of one tap: stores the module's output in ``taps.features[name]``.

    A ``copy.deepcopy`` of a tapped network (a self-teacher, a report's copy) copies its hooks too. A copied tap
    hook is inert: it must not write the copy's activations into the original network's taps.
    """

    def __init__(self, taps: FeatureTaps | None, name: str) -> None:
        self.taps = taps
        self.name = name

    def __call__(self, _module: nn.Module, _inputs: tuple, output: object) -> None:
        if self.taps is not None:
            self.taps.features[self.name] = _first_tensor(output)

    def __deepcopy__(self, memo: dict) -> _TapHook:
        return _TapHook(None, self.name)


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
        self._handles = [module.register_forward_hook(_TapHook(self, name)) for name, module in modules.items()]

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __len__(self) -> int:
        return len(self.taps)


class _InputHook:
    """Forward pre-hook that keeps the first positional input; a deep copy of it is inert (see :class:`_TapHook`)."""

    def __init__(self, tap: InputTap | None) -> None:
        self.tap = tap

    def __call__(self, _module: nn.Module, args: tuple) -> None:
        if self.tap is not None:
            self.tap.value = args[0] if args else None

    def __deepcopy__(self, memo: dict) -> _InputHook:
        return _InputHook(None)


class InputTap:
    """The input of ``network``'s latest forward pass, ``(B, C, H, W)`` or ``(B, C, D, H, W)``, read by a pre-hook.

    :meth:`pop` returns it and drops the reference. The distillation trainer runs the teacher on exactly what the
    student saw, without depending on where the engine keeps the batch.
    """

    def __init__(self, network: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = network.register_forward_pre_hook(_InputHook(self))

    def pop(self) -> torch.Tensor | None:
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self._handle.remove()


def tap_channels(network: nn.Module, taps: Mapping[str, str] | None, input_shape: Sequence[int]) -> dict[str, int]:
    """Channel count of every tap, found with one forward pass of zeros of ``input_shape`` (``[1, C_in, *spatial]``).

    Lets a config size 1x1 adapters and side heads from the taps it declares, e.g.
    ``"$lightvessel_monai.taps.tap_channels(@network, @student_taps, [1, @in_channels] + @patch_size)"``.
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
