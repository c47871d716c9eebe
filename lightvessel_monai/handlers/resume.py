"""Atomic checkpoints that let a killed run resume where it stopped, to the same numbers."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.transforms import Randomizable

from lightvessel_monai.checkpoints import load_weights
from lightvessel_monai.data.samplers import (
    ResumableDistributedSampler,
    ResumableSampler,
    pack_rng_state,
    unpack_rng_state,
)
from lightvessel_monai.errors import CheckpointMismatchError, ConfigKeyError
from lightvessel_monai.handlers.library_internals import key_metric_entries
from lightvessel_monai.pipeline.distributed import is_rank0

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ResumeCheckpoint", "BestCheckpointState", "global_rng_state", "set_global_rng_state"]

logger = logging.getLogger(__name__)


class ResumeCheckpoint:
    """Save everything needed to resume; load it when the run starts again, so that it ends as if never killed.

    The state is saved once per epoch, before its first batch (after the previous epoch's validation, whose RNG
    draws it then includes), and, with ``every_n_iterations``, before every n-th batch inside an epoch. Besides
    ``save_dict`` and the engine's epoch and iteration it holds the global RNG states (torch, numpy, Python), the
    random state of every random transform of the training dataset, and, inside an epoch, that epoch's data order
    and position (the DataLoader's sampler must be a :class:`~lightvessel_monai.data.samplers.ResumableSampler`).
    A run resumed from it continues with the same batches, the same augmentations and the same RNG draws: on the
    CPU its final weights equal those of an uninterrupted run. With ``amp``, the trainer's ``GradScaler`` (its scale
    and growth tracker) is saved and restored too, as ``"scaler"``. Under ``torchrun`` rank 0 writes the file and
    every rank reads it. The augmentations are the same only when they run in
    the main process (``num_workers`` 0); with workers, the data order and position are still exact.

    The file is written by ignite's :class:`~ignite.handlers.DiskSaver` with ``atomic=True`` (a temporary
    file renamed over the old one), so a kill never leaves a truncated checkpoint. It is loaded with
    ``weights_only=True``: every state in it is a tensor or a plain number. When training completes the file is
    removed, so the next run starts afresh (the final weights live in the model checkpoint of ``CheckpointSaver``).

    This is deliberately not a ``CheckpointLoader``: MONAI Label inserts its own loader for ``network``
    only when the config has none.

    Args:
        save_dir: directory of the resume file.
        save_dict: objects with ``state_dict``/``load_state_dict``, e.g. ``{"network": ..., "optimizer": ...,
            "adversarial": ...}``. The engine this handler is attached to is always saved too (as
            ``"trainer"``), so epoch and iteration are restored.
        filename: name of the resume file.
        enabled: ``False`` disables both saving and loading.
        every_n_iterations: also save inside an epoch, before every n-th batch (0: at epoch boundaries only).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str = "resume.pt",
        enabled: bool = True,
        every_n_iterations: int = 0,
    ) -> None:
        self.save_dir = save_dir
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.enabled = enabled
        self.every_n_iterations = int(every_n_iterations)
        self._last_saved = -1
        self._pending_rng: Mapping[str, Any] | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self.load)
        # restoring comes first: a mid-epoch resume restores the RNGs after the DataLoader iterator is created
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._restore_pending_rng)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._save_before_batch)
        engine.add_event_handler(Events.COMPLETED, self.remove)

    # ------------------------------------------------------------------------------------------------ saving

    def _save_before_batch(self, engine: Engine) -> None:
        iteration, length = engine.state.iteration, engine.state.epoch_length
        if iteration == 0 or iteration == self._last_saved or not length:
            return
        if iteration % length == 0 or (self.every_n_iterations and iteration % self.every_n_iterations == 0):
            self.save(engine)
            self._last_saved = iteration

    def save(self, engine: Engine) -> None:
        if not is_rank0():  # under torchrun the ranks hold the same state: rank 0 writes it, every rank reads it
            return
        state: dict[str, Any] = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        scaler = _enabled_scaler(engine)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        state["rng"] = global_rng_state()
        state["transforms"] = [pack_rng_state(r.get_state()) for r in _transform_rngs(engine)]
        consumed = engine.state.iteration % engine.state.epoch_length if engine.state.epoch_length else 0
        if consumed:  # inside an epoch: the rest of this epoch's order is needed
            sampler = _resumable_sampler(engine)
            state["sampler"] = sampler.state_dict(consumed * engine.state.dataloader.batch_size)
        os.makedirs(self.save_dir, exist_ok=True)
        DiskSaver(self.save_dir, atomic=True, create_dir=True, require_empty=False)(state, self.filename)

    # ----------------------------------------------------------------------------------------------- loading

    def load(self, engine: Engine) -> None:
        if self.every_n_iterations:
            _resumable_sampler(engine)  # a config that cannot resume mid-epoch fails now, not at the first save
        if not os.path.isfile(self.path):
            return
        max_epochs = engine.state.max_epochs
        state = load_weights(self.path, "resume")  # pickled objects: a one-line error, nothing executed
        try:
            Checkpoint.load_objects(to_load={**self.save_dict, "trainer": engine}, checkpoint=state)
            scaler = _enabled_scaler(engine)
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            if "transforms" in state:  # absent from the files of earlier versions: they resume, not bit-exact
                rngs, saved = _transform_rngs(engine), state["transforms"]
                if len(saved) != len(rngs):
                    raise ValueError(f"{len(saved)} random transform states for {len(rngs)} random transforms")
                for rng, random_state in zip(rngs, saved, strict=True):
                    rng.set_state(unpack_rng_state(random_state))
        except Exception as err:
            raise CheckpointMismatchError(
                f"resume checkpoint {self.path} does not fit this run ({str(err).splitlines()[0][:200]}); "
                "delete it to start afresh"
            ) from None
        engine.state.max_epochs = max_epochs  # the config's epochs win over the saved ones
        self._last_saved = engine.state.iteration
        if "sampler" in state:
            # the DataLoader iterator is created after this handler, and creating it draws from the global RNG: the
            # saved state is restored after that, before the first batch, as it was when it was saved
            _resumable_sampler(engine).resume_from(state["sampler"])
            self._pending_rng = state["rng"]
        elif "rng" in state:
            set_global_rng_state(state["rng"])
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def _restore_pending_rng(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            set_global_rng_state(self._pending_rng)
            self._pending_rng = None

    def remove(self, engine: Engine) -> None:
        if os.path.isfile(self.path):
            os.remove(self.path)


# ----------------------------------------------------------------------------------------------- RNG states


def global_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python global RNG states, as tensors and numbers (``weights_only`` safe)."""
    version, words, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": pack_rng_state(np.random.get_state()),
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`global_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(unpack_rng_state(state["numpy"]))
    python = state["python"]
    random.setstate((int(python["version"]), tuple(int(w) for w in python["words"].tolist()), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _transform_rngs(engine: Engine) -> list[np.random.RandomState]:
    """The RandomState of every random transform of the training dataset, each once, in a fixed order."""
    dataset = getattr(engine.state.dataloader, "dataset", None)
    found: list[np.random.RandomState] = []
    _collect_rngs(getattr(dataset, "transform", None), found, set(), depth=8)
    return found


def _collect_rngs(obj: Any, found: list[np.random.RandomState], seen: set[int], depth: int) -> None:
    if obj is None or depth < 0 or id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _collect_rngs(item, found, seen, depth - 1)
        return
    if isinstance(obj, Randomizable) and all(obj.R is not r for r in found):
        found.append(obj.R)
    # the random parts of a transform live in its attributes (a Compose's list, a dictionary transform's array one)
    if type(obj).__module__.startswith(("monai.transforms", "lightvessel_monai")) and hasattr(obj, "__dict__"):
        for _, value in sorted(vars(obj).items()):
            if not isinstance(value, (torch.Tensor, np.random.RandomState)):
                _collect_rngs(value, found, seen, depth - 1)


def _enabled_scaler(engine: Engine) -> Any:
    """The trainer's AMP ``GradScaler`` (MONAI's ``SupervisedTrainer.scaler``) when it is in use, else ``None``."""
    scaler = getattr(engine, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def _resumable_sampler(engine: Engine) -> ResumableSampler | ResumableDistributedSampler:
    sampler = getattr(engine.state.dataloader, "sampler", None)
    if not isinstance(sampler, (ResumableSampler, ResumableDistributedSampler)):
        raise ConfigKeyError(
            "resume_every_n_iterations needs the training DataLoader's sampler to be a "
            "lightvessel_monai.data.samplers.ResumableSampler (or, under torchrun, ResumableDistributedSampler), "
            f"not {type(sampler).__name__}"
        )
    return sampler


class BestCheckpointState:
    """The best-metric bookkeeping of a MONAI ``CheckpointSaver``, as an object a resume checkpoint can hold.

    ``CheckpointSaver(save_key_metric=True)`` keeps, in its ignite ``Checkpoint``, the score of the best epoch so far;
    a new process starts with none, so after a resume the first validation, however poor, would replace
    ``models/model.pt``. Put this in the resume ``save_dict`` and the resumed saver compares against the best score
    of the killed run. MONAI's saver offers ``load_state_dict`` but no ``state_dict``; the latter reads its key-metric
    ``Checkpoint`` (:func:`~lightvessel_monai.handlers.library_internals.key_metric_entries`).
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        return {"_saved": key_metric_entries(self.saver)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(dict(state))
