"""A tqdm progress bar for MONAI workflows, configurable from a bundle's handler list."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ignite.handlers import ProgressBar

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """Wrap :class:`ignite.handlers.ProgressBar` so that it has MONAI's ``attach(engine)`` signature.

    Args:
        output_transform: maps ``engine.state.output`` to a number or a dict shown beside the bar,
            e.g. :func:`lightvessel_monai.reporting.learning_curves.loss_terms`.
        enabled: ``False`` attaches nothing (for example in CI logs, where StatsHandler lines suffice).
        kwargs: passed to ``ProgressBar`` (``persist``, ``bar_format``, ...).
    """

    def __init__(self, output_transform: Callable[[Any], Any] | None = None, enabled: bool = True, **kwargs: Any):
        self.output_transform = output_transform
        self.enabled = enabled
        self.kwargs = kwargs

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            ProgressBar(**self.kwargs).attach(engine, output_transform=self.output_transform)
