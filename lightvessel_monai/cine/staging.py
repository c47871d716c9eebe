"""Outputs that appear whole or not at all: every run is written into a hidden folder, moved into place at the end.

A cine inference writes several files per run (DICOM SEG, PNG masks, GIF). They are written under
``<output_dir>/.staging-<random>/<run>/`` and, once every run has been segmented and written, each run's folder is
renamed to ``<output_dir>/<run>/`` (a rename within one file system: a reader sees the old folder or the new one).
On any error the staging folder is removed, and so are the folders that this writer created: nothing is left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from lightvessel_monai.files import replace_folder
from lightvessel_monai.pipeline.settings import check_writable

__all__ = ["StagedOutputs"]


class StagedOutputs:
    """Context manager: ``folder(name)`` to write into, ``commit()`` to move every folder into ``output_dir``.

    Write the files of a folder with :func:`lightvessel_monai.files.atomic_write` (complete and synced on disk before
    the folder is moved into place)."""

    def __init__(self, output_dir: str | os.PathLike, key: str = "output_dir") -> None:
        self.output_dir = Path(output_dir).absolute()
        self.key = key
        self._created: list[Path] = []
        self._staged: dict[str, Path] = {}
        self._tmp: Path | None = None

    def __enter__(self) -> StagedOutputs:
        check_writable({self.key: self.output_dir})
        missing = [p for p in (self.output_dir, *self.output_dir.parents) if not p.exists()]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first, the order to remove them in
        self._tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.output_dir))
        return self

    def folder(self, name: str) -> Path:
        assert self._tmp is not None, "use StagedOutputs as a context manager"
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"an output folder name must be a plain file name, got {name!r}")
        path = self._tmp / name
        path.mkdir()
        self._staged[name] = path
        return path

    def commit(self) -> list[str]:
        """Move every staged folder to ``output_dir/<name>``, replacing one left by an earlier run."""
        assert self._tmp is not None
        done = []
        for name, staged in self._staged.items():
            # a folder of an earlier run goes to the staging folder, which is removed on exit
            done.append(replace_folder(staged, self.output_dir / name, self._tmp / f".previous-{name}"))
        self._created = []  # the outputs are in place: keep their folders
        return done

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        for folder in self._created:
            try:
                folder.rmdir()  # only if empty: another writer's files stay
            except OSError:
                break
