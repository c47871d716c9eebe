"""The stages of one training run: pre-flight checks, the teacher (trained when no matching checkpoint is cached,
then loaded), then distillation. The bundle's ``run`` lists them in order."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from monai.data.utils import set_rnd
from monai.utils import set_determinism
from torch import nn

from lightvessel_monai.checkpoints import load_state_dict_checked, read_state_dict
from lightvessel_monai.data.checks import count_outside
from lightvessel_monai.errors import CheckpointMismatchError, ConfigKeyError
from lightvessel_monai.files import atomic_write, atomic_write_text
from lightvessel_monai.losses.method import DistillationMethod

__all__ = [
    "describe",
    "teacher_fingerprint",
    "run_fingerprint",
    "cached_teacher_path",
    "load_teacher",
    "TeacherStage",
    "Preflight",
]

logger = logging.getLogger(__name__)


_SIMPLE = (bool, int, float, str, type(None))
_OPAQUE = (np.ndarray, torch.Tensor, np.random.RandomState)

# Classes that moved in the layout of issue 29 keep, in a description, the module they were first defined in:
# fingerprints hash descriptions, and stored teachers, ACT caches and resume files must keep their keys.
_FIRST_MODULE = {
    "lightvessel_monai.gkd.losses": "lightvessel_monai.losses.gkd",
    "lightvessel_monai.gkd.msan": "lightvessel_monai.networks.msan",
    "lightvessel_monai.gkd.alignment": "lightvessel_monai.act",
    "lightvessel_monai.gkd.semantic_distance.FrechetSemanticDistance": "lightvessel_monai.metrics.semantic_distance",
    "lightvessel_monai.gkd.semantic_distance": "lightvessel_monai.handlers.semantic_distance",
    "lightvessel_monai.pipeline.stages": "lightvessel_monai.stages",
    "lightvessel_monai.pipeline.settings": "lightvessel_monai.settings",
    "lightvessel_monai.compare.runs": "lightvessel_monai.compare",
    "lightvessel_monai.compare.outputs": "lightvessel_monai.compare_outputs",
    "lightvessel_monai.compare.significance": "lightvessel_monai.significance",
    "lightvessel_monai.reporting.run_report": "lightvessel_monai.report",
    "lightvessel_monai.reporting.learning_curves": "lightvessel_monai.handlers.learning_curve",
    "lightvessel_monai.taps": "lightvessel_monai.features",
}


def _class_name(cls: type) -> str:
    """``module.QualName`` of ``cls``, with the module it was first defined in (:data:`_FIRST_MODULE`)."""
    module = cls.__module__
    module = _FIRST_MODULE.get(f"{module}.{cls.__qualname__}", _FIRST_MODULE.get(module, module))
    return f"{module}.{cls.__qualname__}"


def _init_parameters(cls: type) -> set[str]:
    try:
        return set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return set()


def describe(obj: Any, depth: int = 6) -> Any:
    """A JSON-able description of a transform chain or a loss: class names and their settings.

    Of an object's public attributes, those named like a parameter of its ``__init__`` are kept (the settings:
    ``prob``, ``keys``, ``minv``, ...) and nested objects (the array transform inside a dictionary transform, a
    ``Compose``'s list, a loss's sub-losses) are described in turn, up to ``depth`` levels. Values a random
    transform draws as it runs (``gamma_value``, ``centers``, ...) are not ``__init__`` parameters and are left
    out, as are random states and arrays of more than 64 values: the description depends only on the configuration.
    """
    if isinstance(obj, _SIMPLE):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(x, depth) for x in obj] if depth > 0 else len(obj)
    if isinstance(obj, Mapping):
        return {str(k): describe(v, depth - 1) for k, v in obj.items()} if depth > 0 else len(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    name = _class_name(type(obj))
    if depth <= 0 or not hasattr(obj, "__dict__") or isinstance(obj, _OPAQUE):
        return name
    settings = _init_parameters(type(obj))
    fields = {}
    for key, value in sorted(vars(obj).items()):
        if key.startswith("_") or isinstance(value, np.random.RandomState):
            continue
        if isinstance(value, (np.ndarray, torch.Tensor)):
            if key in settings and math.prod(value.shape) <= 64:
                fields[key] = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist()
            continue  # a large array is data (a kernel, a cached grid), not a setting
        nested = hasattr(value, "__dict__") and not isinstance(value, (type, torch.dtype))
        if key in settings or nested:
            fields[key] = describe(value, depth - 1)
    if isinstance(obj, nn.Module):  # sub-losses and layers live in the private _modules
        fields.update({key: describe(child, depth - 1) for key, child in obj.named_children()})
    return {name: fields}


def teacher_fingerprint(
    teacher: nn.Module, datalist: Sequence[Mapping] | None = None, settings: Any = None, recipe: Any = None
) -> str:
    """A short hash of what determines a trained network: architecture, training data, settings and recipe.

    It keys the teacher cache, and (as :func:`run_fingerprint`, with the student) the resume state of a run, so
    that a run resumes only its own state and never blocks, or overwrites, the state of a different run.

    ``recipe`` is what else shapes the teacher, e.g. ``{"transforms": <the training Compose>, "loss": <loss>}``:
    it enters the hash through :func:`describe`, so that changing the preprocessing, the augmentation or the loss
    trains a new teacher instead of reusing one trained on differently prepared data.
    """
    shapes = [(name, tuple(t.shape)) for name, t in teacher.state_dict().items()]
    files = [sorted((k, os.path.basename(str(v))) for k, v in item.items()) for item in (datalist or [])]
    blob = {"arch": repr(teacher), "shapes": shapes, "data": files, "settings": settings}
    if recipe is not None:
        blob["recipe"] = describe(recipe)
    return hashlib.sha256(json.dumps(blob, default=str).encode()).hexdigest()[:12]


run_fingerprint = teacher_fingerprint  # the same key, computed for the student of a run


def run_settings(
    hyperparameters: Mapping[str, Any],
    teacher: str | None,
    method: DistillationMethod,
    unlabeled: Sequence[Mapping] | None = None,
    unlabeled_ratio: float = 1.0,
    mixup: Sequence[Any] = (0.0, 1.0, "mixup"),
    teacher_precision: str = "float32",
) -> dict[str, Any]:
    """The ``settings`` of a student's :func:`run_fingerprint`, in the order the hash has always read them.

    Args:
        hyperparameters: ``{"seed", "learning_rate", "batch_size", "samples_per_image", "patch_size"}``.
        teacher: the teacher's fingerprint, or ``None`` for a method without a teacher.
        method: its part is each term's configured weight (:meth:`DistillationMethod.fingerprint`).
        unlabeled: the unlabelled datalist when the run uses it, else ``None``: each image's file name and zoom,
            and ``unlabeled_ratio``, enter the hash (a run on other unlabelled images resumes nothing).
        mixup: ``[mixup_prob, mixup_alpha, mixup_mode]``; nothing enters the hash while ``mixup_prob`` is 0, and the
            mode only when it is not the default ``"mixup"`` (so the keys of runs before CutMix stay as they were).
        teacher_precision: enters the hash only when it is not the default ``"float32"``, for the same reason.
    """
    settings = {**hyperparameters, "teacher": teacher, **method.fingerprint()}
    if unlabeled is not None:
        settings["unlabeled"] = [(os.path.basename(str(e["image"])), e.get("zoom", 1.0)) for e in unlabeled]
        settings["unlabeled_ratio"] = unlabeled_ratio
    prob, alpha, mode = mixup
    if prob:
        settings["mixup"] = [prob, alpha] + ([mode] if mode != "mixup" else [])
    if teacher_precision != "float32":
        settings["teacher_precision"] = teacher_precision
    return settings


def _entry_files(datalist: Sequence[Mapping] | None) -> list[str]:
    """Every file named by the entries, in order (a folder, e.g. a DICOM series, counts as all the files in it)."""
    files: list[str] = []
    for entry in datalist or []:
        for key in sorted(entry):
            values = entry[key] if isinstance(entry[key], (list, tuple)) else [entry[key]]
            for value in values:
                path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
                if path and os.path.isdir(path):
                    files += sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
                elif path and os.path.isfile(path):
                    files.append(path)
    return files


def data_stat_digest(datalist: Sequence[Mapping] | None) -> str:
    """A cheap hash of the data files' paths, sizes and modification times (no file is read)."""
    stats = [(p, s.st_size, s.st_mtime_ns) for p in _entry_files(datalist) for s in [os.stat(p)]]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def data_content_digest(datalist: Sequence[Mapping] | None) -> str:
    """A hash of the data files' bytes, in datalist order (file names do not enter it)."""
    digest = hashlib.sha256()
    for path in _entry_files(datalist):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")  # file boundary
    return digest.hexdigest()


def cached_teacher_path(teacher_dir: str, fingerprint: str) -> str:
    """Where the teacher trained for ``fingerprint`` is cached (outside ``models/*.pt``, see MONAI Label)."""
    return os.path.join(teacher_dir, f"teacher_{fingerprint}.pt")


def load_teacher(teacher: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a teacher checkpoint (``weights_only=True``) into ``teacher``: the one place the bundle does it, for the
    teacher stage and for the pre-flight check of an explicit ``teacher_checkpoint``. A missing file or a checkpoint
    of another architecture is a one-line :class:`~lightvessel_monai.errors.CheckpointMismatchError`."""
    load_state_dict_checked(teacher, checkpoint, what="teacher")


class TeacherStage:
    """Make sure a trained teacher checkpoint exists before distillation, and load it into the teacher.

    :meth:`ensure` is the first step of the bundle's ``run``: it reuses the cached checkpoint or trains the teacher,
    then loads the checkpoint into ``teacher``. It is the one place where the teacher's weights are loaded.

    Args:
        trainer: the teacher's ``SupervisedTrainer`` (only run when needed).
        checkpoint: the teacher checkpoint the distillation will load.
        best_checkpoint: the file the teacher trainer's ``CheckpointSaver`` writes (best validation Dice).
        explicit: ``True`` when the user named ``checkpoint``: it is never retrained, only checked.
        teacher: the teacher network; :meth:`ensure` loads the checkpoint into it.
        evaluator: the teacher's validation evaluator, whose best metric is recorded.
        info: written beside a newly cached checkpoint as JSON, to say what it was trained with.
        seed: when given, the global RNGs (and the random transforms of ``dataset``) are re-seeded after this
            stage, so that distillation gives the same numbers whether the teacher was trained in this run
            or loaded from the cache.
        dataset: the training dataset whose random transforms are re-seeded with ``seed``.
        datalist: the teacher's training and validation entries. The cache key has only their file names, so the
            hash of their bytes is recorded beside a cached teacher and checked on every reuse (through sizes and
            modification times first, bytes on a change): other data under the same names trains a new teacher.
        enabled: ``False`` for a method without a teacher (``use_teacher`` false): :meth:`ensure` does nothing.
    """

    def __init__(
        self,
        trainer: Any,
        checkpoint: str,
        best_checkpoint: str,
        explicit: bool = False,
        teacher: nn.Module | None = None,
        evaluator: Any = None,
        info: Mapping[str, Any] | None = None,
        seed: int | None = None,
        dataset: Any = None,
        datalist: Sequence[Mapping] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.trainer = trainer
        self.checkpoint = checkpoint
        self.best_checkpoint = best_checkpoint
        self.explicit = explicit
        self.teacher = teacher
        self.evaluator = evaluator
        self.info = dict(info or {})
        self.seed = seed
        self.dataset = dataset
        self.datalist = datalist

    def ensure(self, force: bool = False) -> str | None:
        """Return the teacher checkpoint path, training the teacher first if it is not cached (or ``force``), and
        load it into ``teacher``; ``None`` (and nothing done) when the stage is disabled."""
        if not self.enabled:
            return None
        path = self._ensure(force)
        self.load()
        if self.seed is not None:
            set_determinism(seed=self.seed)
            if self.dataset is not None:
                set_rnd(self.dataset, seed=self.seed)
        return path

    def load(self) -> None:
        """Load the checkpoint into ``teacher`` (a one-line error for a missing file or another architecture)."""
        if self.teacher is not None:
            load_teacher(self.teacher, self.checkpoint)

    def _ensure(self, force: bool) -> str:
        if self.explicit and force:
            raise ConfigKeyError("teacher_checkpoint is set explicitly: it is never retrained (unset it to train)")
        if self.explicit:
            logger.info(f"using the teacher checkpoint {self.checkpoint}")
            return self.checkpoint
        if not force and self._usable_cache():
            logger.info(f"reusing the cached teacher {self.checkpoint}")
            return self.checkpoint
        os.makedirs(os.path.dirname(self.checkpoint) or ".", exist_ok=True)
        # One writer per cache entry: a second run (another comparison, another terminal) waits here, then reuses
        # what the first cached, instead of training into the same stage files at the same time.
        with FileLock(self.lock_path):
            if not force and self._usable_cache():
                logger.info(f"reusing the teacher {self.checkpoint} that another run cached while this one waited")
                return self.checkpoint
            return self._train_and_cache(force, cached=os.path.isfile(self.checkpoint))

    def _usable_cache(self) -> bool:
        return os.path.isfile(self.checkpoint) and self._same_data()

    def _train_and_cache(self, force: bool, cached: bool) -> str:
        if force:
            logger.info(f"retraining the teacher for {self.checkpoint} (forced)")
        elif not cached:
            logger.info(f"no cached teacher at {self.checkpoint}: training the teacher first")
        if os.path.isfile(self.best_checkpoint):
            os.remove(self.best_checkpoint)  # a stale best from an interrupted, different run
        self.trainer.run()
        if not os.path.isfile(self.best_checkpoint):
            raise CheckpointMismatchError(
                f"teacher training finished without writing {self.best_checkpoint}; is validation configured?"
            )
        # a diverged teacher is never cached as if it were valid
        read_state_dict(self.best_checkpoint, "teacher")
        # an atomic copy: a killed run never leaves a half-written cache entry
        with open(self.best_checkpoint, "rb") as best:
            atomic_write(self.checkpoint, lambda f: shutil.copyfileobj(best, f))
        metric = getattr(getattr(self.evaluator, "state", None), "best_metric", None)
        digests = {"data_sha256": data_content_digest(self.datalist), "data_stat": data_stat_digest(self.datalist)}
        self._write_info({**self.info, "best_val_dice": metric, **(digests if self.datalist is not None else {})})
        logger.info(f"cached the teacher at {self.checkpoint} (best validation Dice {metric})")
        return self.checkpoint

    @property
    def lock_path(self) -> str:
        return os.path.splitext(self.checkpoint)[0] + ".lock"

    @property
    def info_path(self) -> str:
        return os.path.splitext(self.checkpoint)[0] + ".json"

    def _write_info(self, info: Mapping[str, Any]) -> None:
        atomic_write_text(self.info_path, json.dumps(info, indent=2, default=str))

    def _same_data(self) -> bool:
        """Whether the cached teacher was trained on the bytes of today's files (see ``datalist``)."""
        if self.datalist is None:
            return True
        try:
            recorded = json.loads(Path(self.info_path).read_text())
        except (OSError, ValueError):
            recorded = {}
        stat = data_stat_digest(self.datalist)
        if "data_sha256" not in recorded:  # cached before the content hash existed: adopt today's files
            logger.warning(f"cached teacher {self.checkpoint} has no data hash (an older cache entry): recording it")
            self._write_info({**recorded, "data_sha256": data_content_digest(self.datalist), "data_stat": stat})
            return True
        if recorded.get("data_stat") == stat:
            return True
        if recorded["data_sha256"] == data_content_digest(self.datalist):  # touched, not changed
            self._write_info({**recorded, "data_stat": stat})
            return True
        logger.warning(
            f"cached teacher {self.checkpoint} was trained on other data under the same file names: retraining it"
        )
        return False


class Preflight:
    """The bundle's pre-flight step: everything that can be wrong with a run is found before anything trains.

    :meth:`check` (one entry of ``initialize``) reads and checks the datalists (every file exists and reads, shapes
    and label values agree: :func:`lightvessel_monai.data.checks.check_datalist` runs when ``train#datalist`` and
    ``validate#datalist`` resolve), says how many entries are read from outside ``dataset_dir``, checks every
    tap path and that each distillation term's taps are declared, and loads an explicitly given teacher
    checkpoint into the teacher to check its architecture. It builds no trainer and writes nothing.

    Args:
        datalists: ``{split: checked datalist}``.
        dataset_dir: the configured data folder (entries outside it are counted, not refused).
        network, student_taps: the student and its taps.
        teacher, teacher_taps: the teacher and its taps.
        method: the run's :class:`~lightvessel_monai.losses.DistillationMethod` (or its ``distillation`` mapping).
        teacher_checkpoint: the explicit ``teacher_checkpoint``, or ``None`` (the teacher stage trains or reuses one).
        use_teacher: ``False`` for a method without a teacher: its taps and checkpoint are not checked.
    """

    def __init__(
        self,
        datalists: Mapping[str, Sequence[Mapping]],
        dataset_dir: str,
        network: nn.Module,
        student_taps: Mapping[str, str] | None = None,
        teacher: nn.Module | None = None,
        teacher_taps: Mapping[str, str] | None = None,
        method: DistillationMethod | Mapping[str, Any] | None = None,
        teacher_checkpoint: str | None = None,
        use_teacher: bool = True,
    ) -> None:
        self.datalists = datalists
        self.dataset_dir = dataset_dir
        self.network = network
        self.student_taps = student_taps
        self.teacher = teacher
        self.teacher_taps = teacher_taps
        self.method = DistillationMethod.of(method)
        self.teacher_checkpoint = teacher_checkpoint
        self.use_teacher = use_teacher

    def check(self) -> None:
        sizes = ", ".join(f"{len(entries)} {split}" for split, entries in self.datalists.items())
        logger.info(f"pre-flight: images per split: {sizes}")
        count_outside([entry for entries in self.datalists.values() for entry in entries], self.dataset_dir)
        self.method.check_taps(self.network, self.student_taps, side="student")
        self.method.check_taps(self.teacher, self.teacher_taps, side="teacher")
        if self.use_teacher and self.teacher is not None and self.teacher_checkpoint:
            load_teacher(self.teacher, self.teacher_checkpoint)
