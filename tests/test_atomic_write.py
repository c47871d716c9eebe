"""A writer killed mid-write leaves the previous file whole: reports, teacher info, comparison results."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from lightvessel_monai.files import atomic_write_text, csv_text

from conftest import REPO

WRITER = """
import sys
from pathlib import Path
from lightvessel_monai.files import atomic_write_text
text = "new," * 60_000_000  # 240 MB: writing it takes long enough to be killed inside the write
Path(sys.argv[2]).write_text("started")
atomic_write_text(sys.argv[1], text)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_file_whole(tmp_path):
    target, started = tmp_path / "report.csv", tmp_path / "started"
    old = "model,dice\nstudent,0.8101\n"
    target.write_text(old)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(started)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # inside the write (a plain open(..., "w") would have truncated the old file by now)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = target.read_text()
    assert text == old or text == "new," * 60_000_000, "a partial file replaced the previous one"


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "results.csv"
    atomic_write_text(target, csv_text([{"model": "none", "dice": 0.7}, {"model": "kd", "dice": 0.71}]))
    assert target.read_text().splitlines() == ["model,dice", "none,0.7", "kd,0.71"]
    atomic_write_text(target, "x\n")
    assert target.read_text() == "x\n" and [p.name for p in target.parent.iterdir()] == ["results.csv"]


def test_a_failing_binary_writer_keeps_the_old_file_and_the_new_file_has_plain_permissions(tmp_path):
    import os

    import pytest

    from lightvessel_monai.files import atomic_write

    target = tmp_path / "model.zip"
    atomic_write(target, lambda f: f.write(b"old"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600

    def broken(f):
        f.write(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
