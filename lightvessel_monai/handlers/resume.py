"""Atomic end-of-epoch checkpoints that let a killed run resume where it stopped."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver

from lightvessel_monai.errors import CheckpointMismatchError
from lightvessel_monai.utils import load_weights

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ResumeCheckpoint"]

logger = logging.getLogger(__name__)


class ResumeCheckpoint:
    """Save everything needed to resume after every epoch; load it when the run starts again.

    The file is written by ignite's :class:`~ignite.handlers.DiskSaver` with ``atomic=True`` (a temporary
    file renamed over the old one), so a kill never leaves a truncated checkpoint. It is loaded with
    ``weights_only=True``. When training completes the file is removed, so the next run starts afresh
    (the final weights live in the model checkpoint written by ``CheckpointSaver``).

    This is deliberately not a ``CheckpointLoader``: MONAI Label inserts its own loader for ``network``
    only when the config has none.

    Args:
        save_dir: directory of the resume file.
        save_dict: objects with ``state_dict``/``load_state_dict``, e.g. ``{"network": ..., "optimizer": ...,
            "adversarial": ...}``. The engine this handler is attached to is always saved too (as
            ``"trainer"``), so epoch and iteration are restored.
        filename: name of the resume file.
        enabled: ``False`` disables both saving and loading.
    """

    def __init__(
        self, save_dir: str, save_dict: Mapping[str, Any], filename: str = "resume.pt", enabled: bool = True
    ) -> None:
        self.save_dir = save_dir
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.enabled = enabled

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.remove)

    def save(self, engine: Engine) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        DiskSaver(self.save_dir, atomic=True, create_dir=True, require_empty=False)(state, self.filename)

    def load(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            return
        max_epochs = engine.state.max_epochs
        state = load_weights(self.path, "resume")  # pickled objects: a one-line error, nothing executed
        try:
            Checkpoint.load_objects(to_load={**self.save_dict, "trainer": engine}, checkpoint=state)
        except Exception as err:
            raise CheckpointMismatchError(
                f"resume checkpoint {self.path} does not fit this run ({str(err).splitlines()[0][:200]}); "
                "delete it to start afresh"
            ) from None
        engine.state.max_epochs = max_epochs  # the config's epochs win over the saved ones
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def remove(self, engine: Engine) -> None:
        if os.path.isfile(self.path):
            os.remove(self.path)


class BestCheckpointState:
    """The best-metric bookkeeping of a MONAI ``CheckpointSaver``, as an object a resume checkpoint can hold.

    ``CheckpointSaver(save_key_metric=True)`` keeps, in its ignite ``Checkpoint``, the score of the best epoch so far;
    a new process starts with none, so after a resume the first validation, however poor, would replace
    ``models/model.pt``. Put this in the resume ``save_dict`` and the resumed saver compares against the best score
    of the killed run. MONAI's saver offers ``load_state_dict`` but no ``state_dict``; the latter reads its key-metric
    ``Checkpoint`` directly.
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        checkpoint = getattr(self.saver, "_key_metric_checkpoint", None)
        saved = checkpoint.state_dict()["_saved"] if checkpoint is not None else []
        # plain floats and strings: the resume file is read back with weights_only=True
        return {"_saved": [(float(priority), str(name)) for priority, name in saved]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(dict(state))
