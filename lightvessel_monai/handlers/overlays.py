"""ValidationOverlayHandler: one picture per validation of a few fixed cases (image, annotation, prediction)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Events

from lightvessel_monai.errors import ConfigKeyError

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ValidationOverlayHandler"]

logger = logging.getLogger(__name__)


def _items(data: Any) -> Iterator[Mapping[str, Any]]:
    """The cases of an engine's ``state.output`` or ``state.batch``: a decollated list of dicts, or a batched dict."""
    if isinstance(data, list):
        yield from (item for item in data if isinstance(item, Mapping))
    elif isinstance(data, Mapping):
        sizes = [len(v) for v in data.values() if isinstance(v, torch.Tensor) and v.ndim > 0]
        for b in range(min(sizes, default=0)):
            yield {k: v[b] for k, v in data.items() if isinstance(v, torch.Tensor) and v.ndim > 0}


def _numpy(value: Any) -> np.ndarray:
    return torch.as_tensor(value).detach().float().cpu().numpy()


def _class_map(value: Any) -> np.ndarray:
    """``(C, *spatial)`` one-hot or scores -> the argmax class map; a single channel is taken as the class map."""
    array = _numpy(value)
    return array.argmax(axis=0) if array.shape[0] > 1 else np.rint(array[0])


def _case_name(image: Any, number: int) -> str:
    """The image file's name from its MONAI metadata (``filename_or_obj``), else ``case <number>``."""
    source = getattr(image, "meta", {}).get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    return os.path.basename(str(source)) if source else f"case {number}"


def _dice(label: np.ndarray, pred: np.ndarray) -> float:
    """Foreground (class > 0) Dice over the whole case; 1 when both are empty."""
    lab, prd = label > 0, pred > 0
    total = int(lab.sum()) + int(prd.sum())
    return 1.0 if total == 0 else 2.0 * float((lab & prd).sum()) / total


class ValidationOverlayHandler:
    """Attach to an evaluator: after each of its runs, one PNG of the first ``num_cases`` validation cases.

    For each case the figure shows the image, the annotation, the prediction and their error overlay (true
    positives white, false positives red, false negatives blue), with the case's foreground Dice. The cases are the
    first ``num_cases`` the evaluator sees, so with an unshuffled validation loader they are the same cases at every
    validation and the pictures of successive epochs compare like with like.

    The handler reads ``image``, ``label`` and ``pred`` from the evaluator's output after its postprocessing, where
    label and prediction may be one-hot (their argmax is drawn) or class maps, decollated or batched. A multi-channel
    image is drawn as the mean of its channels, or, with ``image_channels``, as one panel per listed channel (a 2.5D
    slab's neighbouring slices: LVSD300 draws slices 3, 4 and 5 of 7), the error overlay on the middle one. A 3D
    case is drawn as one slice along the last axis (axial after ``Orientationd("RAS")``): the one where the
    annotation has the most foreground, so the vessels are in view; its index is in the row's title. Each slice is
    transposed for display by default, so a 2D PNG read by MONAI's ``PILReader`` (which returns ``(W, H)`` arrays)
    appears as the file does.

    The file is ``<output_dir>/<folder>/epoch_<k>.png`` (``<name>_epoch_<k>.png`` with a ``name``), written atomically,
    where ``k`` is the evaluator's ``state.epoch``: ``Evaluator.run(global_epoch)`` sets it to the trainer's epoch, so
    under a ``ValidationHandler`` ``k`` is the training epoch just validated. A validation repeated at the same epoch
    (a resumed run) replaces that epoch's file.

    Args:
        output_dir: the run's output folder (``@output_dir``, ``<bundle_root>/eval``).
        num_cases: how many validation cases to draw (the first ones); 0 draws nothing.
        name: optional file prefix and title, e.g. ``"teacher"``.
        folder: sub-folder of ``output_dir`` for the PNGs.
        mask_key: optional batch key of a region of interest (e.g. ``"fov"``): outside it the overlay is darkened.
        transpose: transpose each 2D view for display (see above).
        image_channels: the image channels to draw side by side (``None``: their mean, one panel).
        enabled: ``False`` attaches nothing (e.g. on every rank but 0 of a multi-GPU run).
    """

    def __init__(
        self,
        output_dir: str,
        num_cases: int = 3,
        name: str = "",
        folder: str = "overlays",
        mask_key: str | None = None,
        transpose: bool = True,
        image_channels: Sequence[int] | None = None,
        enabled: bool = True,
    ) -> None:
        if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 0:
            raise ConfigKeyError(
                f"ValidationOverlayHandler: num_cases (train.json: overlay_cases) must be a whole number >= 0, "
                f"got {num_cases!r}"
            )
        self.output_dir = str(output_dir)
        self.num_cases = int(num_cases)
        self.name = str(name or "")
        self.folder = folder
        self.mask_key = mask_key
        self.transpose = bool(transpose)
        if image_channels is not None and (
            not isinstance(image_channels, Sequence)
            or not image_channels
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in image_channels)
        ):
            raise ConfigKeyError(
                f"ValidationOverlayHandler: image_channels (overlay_image_channels) must be a non-empty list of "
                f"channel indices >= 0, or null, got {image_channels!r}"
            )
        self.image_channels = None if image_channels is None else [int(c) for c in image_channels]
        self.enabled = bool(enabled) and self.num_cases > 0
        self.cases: list[dict[str, Any]] = []
        self.written: list[str] = []

    def path(self, epoch: int) -> str:
        prefix = f"{self.name}_" if self.name else ""
        return os.path.join(self.output_dir, self.folder, f"{prefix}epoch_{int(epoch)}.png")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases = []

    def _collect(self, engine: Engine) -> None:
        if len(self.cases) >= self.num_cases:
            return
        batches = list(_items(engine.state.batch)) if self.mask_key else []
        for index, item in enumerate(_items(engine.state.output)):
            if len(self.cases) >= self.num_cases:
                return
            if not all(k in item for k in ("image", "label", "pred")):
                continue
            mask = batches[index].get(self.mask_key) if index < len(batches) else None
            self.cases.append(self._case(item, mask, len(self.cases)))

    def _case(self, item: Mapping[str, Any], mask: Any, number: int) -> dict[str, Any]:
        channels = _numpy(item["image"])
        label, pred = _class_map(item["label"]), _class_map(item["pred"])
        roi = None if mask is None else _numpy(mask)[0] > 0
        case: dict[str, Any] = {"dice": _dice(label, pred), "title": _case_name(item["image"], number)}
        views = {"label": label, "pred": pred, "mask": roi}
        if self.image_channels is None:
            views["image"] = channels.mean(axis=0)
        else:
            if max(self.image_channels) >= channels.shape[0]:
                raise ConfigKeyError(
                    f"ValidationOverlayHandler: image_channels {self.image_channels} for an image of "
                    f"{channels.shape[0]} channels"
                )
            views.update({f"channel {c}": channels[c] for c in self.image_channels})
            views["image"] = channels[self.image_channels[len(self.image_channels) // 2]]
        if label.ndim == 3:
            from lightvessel_monai.reporting.figures import most_foreground_slice

            z = most_foreground_slice(label)
            views = {k: None if v is None else v[..., z] for k, v in views.items()}
            case["title"] += f", slice {z}"
        for key, view in views.items():
            view = None if view is None else (view.T if self.transpose else view)
            if key.startswith("channel "):
                case.setdefault("channels", {})[key] = view
            else:
                case[key] = view
        return case

    def _write(self, engine: Engine) -> None:
        if not self.cases:
            return
        from lightvessel_monai.reporting.figures import validation_overlay_figure

        epoch = int(engine.state.epoch)
        path = self.path(epoch)
        title = f"{self.name + ' ' if self.name else ''}validation, epoch {epoch}"
        validation_overlay_figure(self.cases, path, title=title)
        self.written.append(path)
        logger.info(f"validation overlay: {path}")
