"""Periodic validation that always scores the run's final weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ignite.engine import Events
from monai.handlers import ValidationHandler

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FinalValidationHandler"]


class FinalValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler``, plus one validation after the last epoch when the interval skipped it.

    With ``max_epochs`` not a multiple of the interval (``--max_epochs 1`` and ``val_interval 2``) the plain handler
    never validates the last epochs, so the best-metric checkpoint (``models/model.pt``) and the report could come
    from an earlier run. Validating once more at the end makes every run save and score its own weights. Only for
    ``epoch_level=True``; the arguments are the parent's.
    """

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if not self.epoch_level:
            raise ValueError("FinalValidationHandler validates by epoch: use epoch_level=True")
        engine.add_event_handler(Events.COMPLETED, self._validate_last_epoch)

    def _validate_last_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch > 0 and epoch % self.interval != 0:
            self(engine)
