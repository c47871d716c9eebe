"""Reading network weights safely: ``torch.load(..., weights_only=True)``, checked against the network, with
one-line errors naming the file."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightvessel_monai.errors import CheckpointMismatchError

__all__ = ["load_weights", "load_state_dict_checked", "read_state_dict", "check_finite_state"]


def _unwrap_state_dict(obj: Any) -> Mapping[str, torch.Tensor] | None:
    """A plain state dict, or a dict with one nested state dict (``{"model": sd}``) as some savers write."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping) and len(obj) == 1:
        return _unwrap_state_dict(next(iter(obj.values())))
    return None


def load_weights(path: str | os.PathLike, what: str = "network") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a one-line error naming the file.

    A file that holds pickled Python objects (a whole module, a callable) is refused by the safe loader and nothing
    in it runs. Torch's own message would then suggest ``weights_only=False``, which would run that code; the
    message here says what the file is instead and never suggests the unsafe load.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointMismatchError(
            f"{what} checkpoint {path} is not a plain state dict: it holds pickled Python objects, which are never "
            "loaded; save model.state_dict() with torch.save instead"
        ) from None
    except Exception as err:  # truncated file or not a torch file
        raise CheckpointMismatchError(f"{what} checkpoint {path} cannot be read: {str(err).splitlines()[0]}") from None


def load_state_dict_checked(network: nn.Module, path: str | os.PathLike, what: str = "network") -> nn.Module:
    """Load a state-dict file into ``network`` with ``weights_only=True``, or fail with one line.

    The message names the file and says how it differs from the network: missing/unexpected keys
    or tensor shapes, so a checkpoint of another architecture is caught before training.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointMismatchError(f"{what} checkpoint {path} does not exist")
    state = read_state_dict(path, what)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointMismatchError(
            f"{what} checkpoint {path} does not fit {type(network).__name__}: {'; '.join(problems)}"
        )
    network.load_state_dict(state)
    return network


def read_state_dict(path: str | os.PathLike, what: str = "network") -> Mapping[str, torch.Tensor]:
    """The state dict in ``path`` (safe load), checked to be tensors only and finite; one-line errors otherwise."""
    state = _unwrap_state_dict(load_weights(path, what))
    if state is None:
        raise CheckpointMismatchError(f"{what} checkpoint {path} is not a state dict of tensors")
    check_finite_state(state, path, what)
    return state


def check_finite_state(state: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str = "network") -> None:
    """A one-line :class:`CheckpointMismatchError` when a floating tensor of ``state`` holds NaN or Inf.

    A diverged run writes such weights; loading (or caching) them would make every prediction NaN.
    """
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatchError(
            f"{what} checkpoint {path} holds NaN or infinite values in {len(bad)} of {len(state)} tensors "
            f"(e.g. {', '.join(bad[:3])}): it comes from a diverged run"
        )
