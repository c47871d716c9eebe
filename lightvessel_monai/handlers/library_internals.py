"""The private parts of MONAI and ignite that this package relies on, one small function each.

Each is pinned by ``tests/test_library_internals.py``, which fails when an upgrade renames or reorders what is
read here; nothing else in the package touches these attributes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["key_metric_entries", "iteration_output"]


def key_metric_entries(saver: Any) -> list[tuple[float, str]]:
    """The best-metric bookkeeping of a MONAI ``CheckpointSaver(save_key_metric=True)``: ``[(score, file name)]``.

    MONAI's saver has ``load_state_dict`` but no ``state_dict``; its key-metric ignite ``Checkpoint`` is the private
    ``_key_metric_checkpoint``, and that checkpoint's state holds the list under ignite's ``"_saved"``. Plain floats
    and strings, so that a resume file holding them loads with ``weights_only=True``. ``[]`` before any validation.
    """
    checkpoint = getattr(saver, "_key_metric_checkpoint", None)
    if checkpoint is None:
        return []
    return [(float(priority), str(name)) for priority, name in checkpoint.state_dict()["_saved"]]


def iteration_output(engine: Any) -> dict:
    """``engine.state.output`` *during* a MONAI ``SupervisedTrainer`` iteration, from inside its loss function.

    ``SupervisedTrainer._iteration`` puts ``{image, label}`` into ``state.output`` before the forward pass and adds
    ``pred`` and ``loss`` after the loss returns, so the distillation loss can add its per-term values to the same
    dict (they are logged with the iteration). A clear error, not silently lost values, if MONAI changes that order.
    """
    output = engine.state.output
    if not isinstance(output, dict):  # ignite's own start value is None; MONAI's iteration makes it a dict
        raise RuntimeError(
            "MONAI's SupervisedTrainer no longer fills state.output before calling the loss (got "
            f"{type(output).__name__}); lightvessel_monai.handlers.library_internals.iteration_output needs updating"
        )
    return output
