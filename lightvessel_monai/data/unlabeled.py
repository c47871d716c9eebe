"""Images nobody annotated, as part of the training data: their list, their pipeline and the stream a step draws from.

An unlabelled sample travels through the same collation, augmentation and trainer as a labelled one. What marks it
is its label: :class:`MarkUnlabeledd` gives it a label of :data:`UNLABELED` (-1) everywhere, so that every spatial
augmentation keeps image and "label" aligned, and :func:`labelled_samples` tells the two kinds apart in a batch
(a sample is labelled when no pixel of its label is negative: a zero-padded border of a rotated patch does not turn
an unlabelled sample into a labelled one). The trainer then keeps unlabelled samples out of the segmentation loss
and gives the distillation terms the teacher's prediction in their place
(:class:`~lightvessel_monai.engines.DistillationTrainer`).
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset
from monai.transforms import Compose, MapTransform, Randomizable, Zoom

from lightvessel_monai.data.checks import check_datalist, load_datalist
from lightvessel_monai.data.samplers import pack_rng_state, unpack_rng_state
from lightvessel_monai.errors import ConfigKeyError, DataError

__all__ = [
    "UNLABELED",
    "MarkUnlabeledd",
    "ZoomItemd",
    "UnlabeledStream",
    "labelled_samples",
    "unlabeled_datalist",
    "unlabeled_stream",
    "unlabeled_transform",
]

logger = logging.getLogger(__name__)

UNLABELED = -1
"""The label value of a sample without annotation."""


def labelled_samples(label: torch.Tensor) -> torch.Tensor:
    """``(B,)`` booleans: which samples of a label ``(B, 1 or K, ...)`` carry an annotation (no negative value)."""
    return label.reshape(label.shape[0], -1).amin(dim=1) >= 0


def unlabeled_datalist(
    datalist_file: str | None,
    unlabeled_glob: str | Sequence[str] | None = None,
    key: str = "unlabeled",
    *,
    glob_zoom: float = 1.0,
    spatial_dims: int | None = None,
    image_channels: int | None = None,
    min_shape: Sequence[int] | None = None,
    reader: str | None = None,
) -> list[dict]:
    """The unlabelled training images: the datalist's ``key`` list (if it has one), then every ``unlabeled_glob`` match.

    Entries are ``{"image": path}`` (an entry's other keys are ignored, its label included: an image listed here is
    used without one), with ``"zoom"`` where the image is to be rescaled (:class:`ZoomItemd`): a datalist entry may
    give its own, and every glob match gets ``glob_zoom`` (``unlabeled_zoom``: frames of another scanner) when it
    is not 1. Glob patterns are expanded with ``recursive=True`` and sorted, so the order does not depend on
    the file system. Every file is checked as the labelled images are (readable, ``spatial_dims``, channels, not
    smaller than ``min_shape``); a bad one is a one-line :class:`~lightvessel_monai.errors.DataError` naming it.

    Returns an empty list when neither gives an image. A pattern that matches nothing is an error: a mistyped
    ``--unlabeled_glob`` must not silently train without the images the user meant.
    """
    entries: list[dict] = []
    sources: list[str] = []
    if datalist_file and os.path.isfile(datalist_file):
        try:
            content = json.loads(Path(datalist_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            content = None  # load_datalist of the training list reports a broken datalist
        if isinstance(content, dict) and key in content:
            for e in load_datalist(datalist_file, key):
                if "image" in e:
                    entries.append({"image": e["image"], **({"zoom": float(e["zoom"])} if "zoom" in e else {})})
            sources.append(f"datalist {datalist_file} key '{key}'")
    patterns = [unlabeled_glob] if isinstance(unlabeled_glob, str) else list(unlabeled_glob or [])
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigKeyError(f"'unlabeled_glob' must be a glob pattern or a list of them, got {pattern!r}")
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise DataError(f"unlabeled_glob {pattern!r} matches no file")
        entries += [{"image": p, **({"zoom": float(glob_zoom)} if float(glob_zoom) != 1.0 else {})} for p in matches]
        sources.append(f"unlabeled_glob {pattern!r}")
    if not entries:
        return []
    for entry in entries:
        if "zoom" in entry and not entry["zoom"] > 0:
            raise ConfigKeyError(f"unlabelled image {entry['image']}: zoom must be > 0, got {entry['zoom']}")
    check_datalist(
        entries,
        keys=("image",),
        label_key=None,
        label_values=None,
        source=" + ".join(sources),
        spatial_dims=spatial_dims,
        image_channels=image_channels,
        min_shape=min_shape,
        reader=reader,
    )
    return entries


class MarkUnlabeledd(MapTransform):
    """Give an unlabelled item a label of :data:`UNLABELED` everywhere, shaped as one channel of ``ref_key``.

    Put it after the preprocessing, before the crop and the augmentation: the label then follows every spatial
    transform of the image, and the crop transforms that read a label (``RandCropByPosNegLabeld``) find a single
    class (MONAI's index maps count any non-zero value as foreground) and crop uniformly.

    Args:
        keys: the label key to create (``"label"``).
        ref_key: the image whose first channel gives the label's shape and meta data.
    """

    def __init__(self, keys: KeysCollection = "label", ref_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        for key in self.keys:
            d[key] = (
                torch.full_like(ref[:1], float(UNLABELED))
                if isinstance(ref, torch.Tensor)
                else np.full_like(ref[:1], UNLABELED)
            )
        return d


class ZoomItemd(MapTransform):
    """Rescale ``keys`` by the item's own ``zoom_key`` value (absent: unchanged), then drop that key.

    Unlabelled images from several sources can need different zooms (ARCADE's frames against the XCA set's own
    unlabelled angiograms); the factor travels with each datalist entry.
    """

    def __init__(self, keys: KeysCollection = ("image", "fov"), zoom_key: str = "zoom") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.zoom_key = zoom_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        zoom = float(d.pop(self.zoom_key, 1.0))
        if zoom != 1.0:
            for key in self.key_iterator(d):
                mode = "area" if key == "image" else "nearest"
                d[key] = Zoom(zoom=zoom, mode=mode, keep_size=False)(d[key])
        return d


def _tolerant(transform: Any) -> Any:
    """A deep copy of a transform (or Compose) whose dictionary transforms skip keys an unlabelled item lacks."""
    twin = copy.deepcopy(transform)
    for t in twin.flatten().transforms if isinstance(twin, Compose) else [twin]:
        if isinstance(t, MapTransform):
            t.allow_missing_keys = True
    return twin


def unlabeled_transform(
    preprocessing: Compose, crop_indices: Sequence[Any], augmentation: Sequence[Any], seed: int = 0
) -> Compose:
    """The pipeline of an unlabelled image: the labelled ``preprocessing`` without its label steps, the entry's zoom
    (:class:`ZoomItemd`), a label of -1 (:class:`MarkUnlabeledd`), then the same ``crop_indices`` and
    ``augmentation``.

    The zoom comes after the preprocessing, whose steps (CLAHE with tiles an eighth of the image, a standardisation)
    do not depend on the image's scale. The transforms are copies, seeded from ``seed`` apart from the labelled
    pipeline's, so that the two streams do not draw the same crops and flips.
    """
    steps = [_tolerant(preprocessing), ZoomItemd(("image", "fov"))]
    steps += [MarkUnlabeledd("label"), *(_tolerant(t) for t in crop_indices)]
    steps += [_tolerant(t) for t in augmentation]
    pipeline = Compose(steps)
    pipeline.set_random_state(seed=(int(seed) * 7919 + 104729) % (2**32))
    return pipeline


class UnlabeledStream:
    """The unlabelled images a training step adds to its labelled batch, drawn in a shuffled order that spans epochs.

    Each call of :meth:`draw` returns the augmented samples of the next ``images_per_step`` images of the order
    (``samples_per_image`` crops each, as the labelled pipeline makes them); when the order is used up a new one is
    drawn from torch's global RNG, so a seeded run draws the same images. The deterministic part of the pipeline is
    cached (``CacheDataset``). :meth:`state_dict` holds the order, the position and the random state of every random
    transform, so that a resumed run draws what the killed one would have drawn.

    Under ``torchrun`` every rank draws from the same order and takes its own ``images_per_step`` of each
    ``world_size * images_per_step`` images, so no two ranks see the same image in a step.

    Args:
        datalist: the unlabelled entries (:func:`unlabeled_datalist`).
        transform: their pipeline (:func:`unlabeled_transform`).
        images_per_step: unlabelled images per step and rank (``round(unlabeled_ratio * batch_size)``).
    """

    def __init__(self, datalist: Sequence[Mapping], transform: Compose, images_per_step: int) -> None:
        if not datalist:
            raise DataError("UnlabeledStream needs at least one unlabelled image")
        if int(images_per_step) < 1:
            raise ConfigKeyError(f"unlabelled images per step must be >= 1, got {images_per_step}")
        self.images_per_step = int(images_per_step)
        self.dataset = CacheDataset(
            list(datalist), transform=transform, cache_rate=1.0, copy_cache=True, progress=False
        )
        self.order: list[int] = []
        self.position = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def _next_indices(self, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:
            if self.position >= len(self.order):
                self.order, self.position = torch.randperm(len(self.dataset)).tolist(), 0
            take = min(count - len(picked), len(self.order) - self.position)
            picked += self.order[self.position : self.position + take]
            self.position += take
        return picked

    def draw(self, rank: int = 0, world_size: int = 1) -> list[dict]:
        """The augmented samples of this step's unlabelled images (a flat list of dicts, ready for collation)."""
        indices = self._next_indices(self.images_per_step * world_size)
        mine = indices[rank * self.images_per_step : (rank + 1) * self.images_per_step]
        samples: list[dict] = []
        with warnings.catch_warnings():
            # a pos/neg crop of an unlabelled image sees one class only (-1 everywhere is all "foreground" to MONAI's
            # index maps), so it crops uniformly, as wanted, and MONAI warns about the balance every time
            warnings.filterwarnings("ignore", message=r"Num foregrounds \d+, Num backgrounds \d+")
            for index in mine:
                item = self.dataset[index]
                samples += item if isinstance(item, list) else [item]
        return samples

    def _random_transforms(self) -> list[Randomizable]:
        transform = self.dataset.transform
        flat = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
        return [t for t in flat if isinstance(t, Randomizable)]

    def state_dict(self) -> dict[str, Any]:
        """Order, position and transform RNG states, as tensors and numbers (``weights_only`` safe)."""
        return {
            "order": torch.tensor(self.order, dtype=torch.int64),
            "position": torch.tensor(self.position),
            "size": torch.tensor(len(self.dataset)),
            "transforms": [pack_rng_state(t.R.get_state()) for t in self._random_transforms()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["size"]) != len(self.dataset):
            raise ValueError(f"the resume state holds {int(state['size'])} unlabelled images, this run {len(self)}")
        randoms = self._random_transforms()
        if len(state["transforms"]) != len(randoms):
            raise ValueError(f"{len(state['transforms'])} unlabelled transform states for {len(randoms)} transforms")
        self.order = [int(i) for i in state["order"].tolist()]
        self.position = int(state["position"])
        for t, saved in zip(randoms, state["transforms"], strict=True):
            t.R.set_state(unpack_rng_state(saved))


def unlabeled_stream(
    datalist: Sequence[Mapping],
    transform: Compose,
    unlabeled_ratio: float,
    batch_size: int,
    used: bool = True,
) -> UnlabeledStream | None:
    """The stream of a training run, or ``None`` when it draws no unlabelled image; says which in the log.

    ``round(unlabeled_ratio * batch_size)`` unlabelled images (at least 1 for a positive ratio) join each step's
    ``batch_size`` labelled ones. ``used`` is ``False`` for a method with neither a teacher nor a distillation term
    (``none``): the segmentation loss never sees an unlabelled sample, so the images are not loaded at all.
    """
    if isinstance(unlabeled_ratio, bool) or not isinstance(unlabeled_ratio, (int, float)) or unlabeled_ratio < 0:
        raise ConfigKeyError(f"'unlabeled_ratio' must be a number >= 0, got {unlabeled_ratio!r}")
    if not datalist:
        return None
    per_step = max(1, round(unlabeled_ratio * int(batch_size))) if unlabeled_ratio > 0 else 0
    if not used or per_step == 0:
        why = "the method has no teacher and no distillation term" if not used else "unlabeled_ratio is 0"
        logger.info(f"unlabelled images: {len(datalist)} listed, not used ({why})")
        return None
    logger.info(f"unlabelled images: {len(datalist)}, {per_step} per step beside {batch_size} labelled")
    return UnlabeledStream(datalist, transform, per_step)
