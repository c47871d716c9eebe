"""A sampler whose epoch order survives a kill: the resume state holds the order and how far the run got."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import DistributedSampler
from torch.utils.data import Sampler

__all__ = ["ResumableDistributedSampler", "ResumableSampler", "pack_rng_state", "unpack_rng_state"]


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
        if "order" not in state:
            raise ValueError("the resume state holds a torchrun run's position, not a single-process epoch order")
        self._resume = ([int(i) for i in state["order"].tolist()], int(state["consumed"]))


class ResumableDistributedSampler(DistributedSampler):
    """MONAI's ``DistributedSampler``, resumable inside an epoch under ``torchrun``.

    Each rank's shard of an epoch is a function of the sampler's seed and the epoch number alone (``set_epoch``,
    which MONAI's workflows call at every epoch's start, seeds its own generator), so unlike
    :class:`ResumableSampler` the resume state needs no order, only how many indices of the epoch were consumed:
    rank 0 writes that number, every rank reads it and skips as many of its own shard. This class stays a
    ``DistributedSampler``, so MONAI still calls ``set_epoch`` on it. The arguments are the parent's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        yield from indices[skip:]

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """The epoch and the number of this rank's indices already consumed (the same on every rank)."""
        return {"epoch": torch.tensor(self.epoch), "consumed": torch.tensor(consumed), "distributed": torch.tensor(1)}

    def resume_from(self, state: Mapping[str, Any]) -> None:
        """Make the next epoch skip the ``consumed`` indices of this rank's shard."""
        if "distributed" not in state:
            raise ValueError("the resume state holds a single-process epoch order, not a torchrun run's position")
        self._skip = int(state["consumed"])


def pack_rng_state(state: tuple) -> dict[str, Any]:
    """A numpy ``RandomState.get_state()`` tuple as a tensor and numbers (a ``weights_only`` checkpoint holds it)."""
    _, keys, pos, has_gauss, gauss = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


def unpack_rng_state(state: Mapping[str, Any]) -> tuple:
    """The ``RandomState.set_state()`` tuple of what :func:`pack_rng_state` returned."""
    keys = state["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["gauss"]))
