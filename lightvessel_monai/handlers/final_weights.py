"""FinalWeightsSaver: the network's weights when training completes, the ones a comparison scores."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch
from ignite.engine import Events
from torch import nn

from lightvessel_monai.files import atomic_write
from lightvessel_monai.pipeline.distributed import unwrap

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FinalWeightsSaver"]

logger = logging.getLogger(__name__)


class FinalWeightsSaver:
    """Attach to a trainer: when its run completes, save ``network``'s state dict to ``save_dir/filename``, atomically.

    ``models/model.pt`` is the best validated network (MONAI's ``CheckpointSaver`` with ``save_key_metric``, the
    Model Zoo's convention), selected on the validation images; a comparison that must not select on them scores
    these final weights instead. Unlike ``CheckpointSaver(save_final=True)``, nothing is written when the run
    stops with an error (a diverged or non-finite run), so the file always holds a run that finished. A DDP-wrapped
    network is saved unwrapped, loadable into the plain network.

    Args:
        network: the network whose weights are saved.
        save_dir: the folder (``@ckpt_dir``).
        filename: the file name (``model_final.pt``).
        enabled: ``False`` attaches nothing (every rank but 0 of a multi-GPU run).
    """

    def __init__(self, network: nn.Module, save_dir: str, filename: str = "model_final.pt", enabled: bool = True):
        self.network = network
        self.path = os.path.join(str(save_dir), filename)
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self.save)

    def save(self, engine: Engine | None = None) -> str:
        state = {k: v.detach().cpu() for k, v in unwrap(self.network).state_dict().items()}
        atomic_write(self.path, lambda f: torch.save(state, f))
        logger.info(f"final weights: {self.path}")
        return self.path
