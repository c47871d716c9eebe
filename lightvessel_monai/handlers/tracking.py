"""MONAI's ``MLFlowHandler``, able to add files to its run after the engine has completed."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["MLflowRunHandler"]


class MLflowRunHandler(MLFlowHandler):
    """``MLFlowHandler`` plus :meth:`log_artifacts`, for files written after the engine's run.

    The bundle's report is written once the trainer has returned, when MONAI's tracking handler has already finished
    the run. This handler keeps its run (``close_on_complete=False``, the default), so the bundle's ``finalize`` can
    add the report to it and then close it.

    Args:
        register: a list the handler appends itself to, so that a later step can reach it (``tracking#after_run``
            in ``train.json``); config references cannot name an entry of a handler list.
        kwargs: ``MLFlowHandler``'s arguments.
    """

    def __init__(self, register: list | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if register is not None:
            register.append(self)

    def log_artifacts(self, paths: Iterable[str | os.PathLike | None]) -> str | None:
        """Log each existing file of ``paths`` to the run, then close it; returns the run id (``None``: no run)."""
        if self.cur_run is None:
            return None
        run_id = self.cur_run.info.run_id
        for path in paths:
            if path is not None and os.path.isfile(path):
                self.client.log_artifact(run_id, os.fspath(path))
        self.close()
        return run_id
