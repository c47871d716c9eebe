"""HandlerGroup: lets a method overlay add handlers to the literal ``train#handlers`` list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["HandlerGroup"]


class HandlerGroup:
    """Attach every handler of ``handlers`` to the engine, in order.

    The bundle keeps ``train#handlers`` a literal list of handler dicts, as MONAI Label and the Model Zoo
    tools expect to edit it. Method-specific handlers (the critic update of ASD and SKD, the self-teacher
    of DSKD) come from the method overlay's ``method_handlers`` key through one entry of this class.

    Args:
        handlers: objects with an ``attach(engine)`` method; an empty list attaches nothing.
    """

    def __init__(self, handlers: Sequence[Any] | None = None) -> None:
        self.handlers = list(handlers or [])
        for handler in self.handlers:
            if not callable(getattr(handler, "attach", None)):
                raise TypeError(f"method handler {type(handler).__name__} has no attach(engine) method")

    def attach(self, engine: Engine) -> None:
        for handler in self.handlers:
            handler.attach(engine)
