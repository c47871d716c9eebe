"""GKD's Alignment Consistency Training (ACT) of the teacher's MSAN, as a cached bundle stage.

Two steps, before distillation, with the teacher frozen:

1. the P-SAE (:class:`~lightvessel_monai.gkd.msan.LabelSemanticAutoEncoder`) learns to reconstruct the
   training annotations (Dice + CE);
2. the TAN (the teacher's :class:`~lightvessel_monai.gkd.msan.SemanticHeader`) learns
   :class:`~lightvessel_monai.gkd.losses.AlignmentConsistencyLoss`: its reconstruction, through the teacher's own
   decoder, reproduces the annotation and the teacher's prediction; its vector follows the P-SAE's vector of the
   annotation and stays put under intensity views.

Both are then frozen for distillation. The result is cached like the teacher: ``act_<fingerprint>.pt`` beside the
teacher cache, keyed by the teacher checkpoint's bytes, the two networks, the ACT settings and the training files;
a matching entry is reused, a mismatching one is retrained. The SAN belongs to the student, which only exists
during distillation: its ACT is the online term :class:`~lightvessel_monai.gkd.losses.SemanticAlignment`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from filelock import FileLock
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.losses import DiceCELoss
from monai.utils import set_determinism

from lightvessel_monai.checkpoints import read_state_dict
from lightvessel_monai.files import atomic_write
from lightvessel_monai.gkd.losses import AlignmentConsistencyLoss, GKDSemantics, run_to
from lightvessel_monai.losses._common import label_to_onehot
from lightvessel_monai.pipeline.stages import data_stat_digest, describe

__all__ = ["AlignmentConsistencyStage", "file_sha256"]

logger = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shapes(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in module.state_dict().items()]


class AlignmentConsistencyStage:
    """Train (or reuse) the TAN and the P-SAE of :class:`~lightvessel_monai.gkd.losses.GKDSemantics`.

    :meth:`ensure` is a step of the bundle's ``prepare`` list, after the teacher stage (it reads the trained teacher).

    Args:
        semantics: the shared GKD semantics; its teacher, TAN, P-SAE and views are used.
        dataloader: the training dataloader (``image``, ``label`` batches of training patches).
        cache_dir: where ``act_<fingerprint>.pt`` is cached (the teacher cache folder).
        teacher_checkpoint: the trained teacher's file; its bytes enter the key.
        datalist: the training entries; their file names, sizes and times enter the key.
        psae_iterations, act_iterations: iterations of the two steps.
        learning_rate: AdamW learning rate of both steps.
        loss: the TAN's ACT objective (default: all weights 1).
        seed: seed of this stage's training (part of the key; a comparison keeps it fixed across its seeds).
        reseed: after the stage, the global RNGs (and ``dataset``'s random transforms) are re-seeded with it (the
            distillation's seed), so that distillation gives the same numbers whether ACT ran or was loaded.
        dataset: the training dataset whose random transforms are re-seeded.
        device: where to train (default: the teacher's device).
        enabled: ``False``: :meth:`ensure` does nothing.
    """

    def __init__(
        self,
        semantics: GKDSemantics,
        dataloader: Any,
        cache_dir: str,
        teacher_checkpoint: str,
        datalist: Sequence[Mapping] | None = None,
        psae_iterations: int = 300,
        act_iterations: int = 500,
        learning_rate: float = 1e-3,
        loss: AlignmentConsistencyLoss | None = None,
        seed: int = 0,
        reseed: int | None = None,
        dataset: Any = None,
        device: str | torch.device | None = None,
        enabled: bool = True,
    ) -> None:
        self.semantics = semantics
        self.dataloader = dataloader
        self.cache_dir = cache_dir
        self.teacher_checkpoint = teacher_checkpoint
        self.datalist = datalist
        self.psae_iterations = int(psae_iterations)
        self.act_iterations = int(act_iterations)
        self.learning_rate = float(learning_rate)
        self.loss = loss if loss is not None else AlignmentConsistencyLoss()
        self.seed = int(seed)
        self.reseed = self.seed if reseed is None else int(reseed)
        self.dataset = dataset
        self.device = device
        self.enabled = enabled
        self.trained = False  # whether the last ensure() trained (False: reused the cache)

    # ------------------------------------------------------------------------------------------- the cache key

    def fingerprint(self) -> str:
        """A short hash of the teacher's bytes, the TAN and P-SAE architectures, the settings and the data files."""
        sem = self.semantics
        files = [sorted((k, os.path.basename(str(v))) for k, v in item.items()) for item in (self.datalist or [])]
        blob = {
            "teacher_sha256": file_sha256(self.teacher_checkpoint),
            "teacher_header": [repr(sem.teacher_header), _shapes(sem.teacher_header)],
            "label_autoencoder": [repr(sem.label_autoencoder), _shapes(sem.label_autoencoder)]
            if sem.label_autoencoder is not None
            else None,
            "bottleneck": sem.paths["teacher"],
            "views": [sem.views, describe(sem.augmentation)],
            "settings": [self.psae_iterations, self.act_iterations, self.learning_rate, self.seed, self.loss.weights],
            "data": files,
            "data_stat": data_stat_digest(self.datalist) if self.datalist is not None else None,
        }
        return hashlib.sha256(json.dumps(blob, default=str).encode()).hexdigest()[:12]

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.cache_dir, f"act_{self.fingerprint()}.pt")

    # -------------------------------------------------------------------------------------------------- running

    def ensure(self) -> str | None:
        """Reuse the cached TAN and P-SAE, or train and cache them; then load and freeze them. Returns the path."""
        if not self.enabled:
            return None
        path = self.checkpoint
        os.makedirs(self.cache_dir, exist_ok=True)
        with FileLock(os.path.splitext(path)[0] + ".lock"):
            self.trained = not os.path.isfile(path)
            if self.trained:
                logger.info(f"no cached ACT headers at {path}: training the P-SAE and the TAN")
                state = self.train()
                atomic_write(path, lambda f: torch.save(state, f))
                logger.info(f"cached the ACT headers at {path}")
            else:
                logger.info(f"reusing the cached ACT headers {path}")
        self.load(path)
        set_determinism(seed=self.reseed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed=self.reseed)
        self.semantics.seed_views(self.reseed)
        return path

    def load(self, path: str) -> None:
        sem = self.semantics
        state = read_state_dict(path, "ACT headers")
        for name, module in self._modules().items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        for module in (sem.teacher_header, sem.label_autoencoder):
            if module is not None:
                module.requires_grad_(False).eval()

    def _modules(self) -> dict[str, torch.nn.Module]:
        sem = self.semantics
        modules = {"teacher_header": sem.teacher_header}
        if sem.label_autoencoder is not None:
            modules["label_autoencoder"] = sem.label_autoencoder
        return modules

    def train(self) -> dict[str, torch.Tensor]:
        """Train the P-SAE, then the TAN; return one flat state dict (``teacher_header.*``, ``label_autoencoder.*``)."""
        sem = self.semantics
        teacher = sem.network("teacher")
        device = torch.device(self.device) if self.device is not None else next(teacher.parameters()).device
        set_determinism(seed=self.seed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed=self.seed)
        sem.seed_views(self.seed)
        teacher.eval()
        if sem.label_autoencoder is not None:
            self._fit(sem.label_autoencoder, self._psae_step, self.psae_iterations, device)
            sem.label_autoencoder.eval()
        self._fit(sem.teacher_header, self._tan_step, self.act_iterations, device)
        return {
            f"{name}.{k}": v.detach().cpu()
            for name, module in self._modules().items()
            for k, v in module.state_dict().items()
        }

    def _fit(self, module: torch.nn.Module, step: Any, iterations: int, device: torch.device) -> None:
        module.to(device).train().requires_grad_(True)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.learning_rate, weight_decay=1e-4)

        def update(engine: Engine, batch: Mapping[str, torch.Tensor]) -> float:
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = step(image, label)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        engine = Engine(update)
        name = type(module).__name__

        @engine.on(Events.ITERATION_COMPLETED(every=max(1, iterations // 5)))
        def _log(e: Engine) -> None:
            logger.info(f"ACT {name}: iteration {e.state.iteration}/{iterations}, loss {e.state.output:.4f}")

        epoch_length = min(len(self.dataloader), iterations)
        engine.run(self.dataloader, max_epochs=math.ceil(iterations / epoch_length), epoch_length=epoch_length)
        module.requires_grad_(False)

    def _psae_step(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        sem = self.semantics
        onehot = label_to_onehot(label, sem.num_classes)
        return _dice_ce(sem.label_autoencoder(onehot), label)

    def _tan_step(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        sem = self.semantics
        teacher = sem.network("teacher")
        with torch.no_grad():
            own = teacher(image)
            bottleneck = run_to(teacher, sem.paths["teacher"], image)
            view_bottleneck = run_to(teacher, sem.paths["teacher"], sem.augment(image))
        vector = sem.teacher_header.encode(bottleneck)
        views = sem.teacher_header.encode(view_bottleneck).view(sem.views, image.shape[0], -1).transpose(0, 1)
        reconstruction = sem.decode("teacher", image, vector)
        return self.loss(reconstruction, own, label, vector, views, sem.label_vector(label))


_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)


def _dice_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    index = label if label.shape[1] == 1 else label.argmax(dim=1, keepdim=True)
    return _DICE_CE(logits, index)
