"""A sampler whose epoch order survives a kill: the resume state holds the order and how far the run got."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "pack_rng_state", "unpack_rng_state"]


class ResumableSampler(Sampler[int]):
    """Wrap a sampler (``RandomSampler``) so that a run resumed mid-epoch sees the rest of the same epoch's order.

    Each epoch, the wrapped sampler draws its order as it would inside a plain ``DataLoader(shuffle=True)``, at the
    same moment and from the same global RNG, so wrapping it changes no run's data order. The order is kept; the
    resume state (:class:`~lightvessel_monai.handlers.ResumeCheckpoint`) stores it with the number of indices the
    trainer has consumed, and after :meth:`resume_from` the next epoch yields the stored order from that position,
    without drawing a new one.

    Args:
        sampler: the sampler to wrap, e.g. ``RandomSampler(dataset)``.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.order: list[int] = []
        self._resume: tuple[list[int], int] | None = None

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            self.order, start = self._resume
            self._resume = None
        else:
            self.order, start = list(self.sampler), 0
        yield from self.order[start:]

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """This epoch's order and the number of its indices already consumed, as tensors (``weights_only`` safe)."""
        return {"order": torch.tensor(self.order, dtype=torch.int64), "consumed": torch.tensor(consumed)}

    def resume_from(self, state: Mapping[str, Any]) -> None:
        """Make the next epoch continue the stored one from its ``consumed`` position."""
        self._resume = ([int(i) for i in state["order"].tolist()], int(state["consumed"]))


def pack_rng_state(state: tuple) -> dict[str, Any]:
    """A numpy ``RandomState.get_state()`` tuple as a tensor and numbers (a ``weights_only`` checkpoint holds it)."""
    _, keys, pos, has_gauss, gauss = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


def unpack_rng_state(state: Mapping[str, Any]) -> tuple:
    """The ``RandomState.set_state()`` tuple of what :func:`pack_rng_state` returned."""
    keys = state["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["gauss"]))
