"""benchmarks/gpu_check.py: "no GPU" and exit 0 on a CPU machine; its cases and table, run on the CPU."""

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
TINY = [
    "synthetic#num_train=4",
    "synthetic#num_val=2",
    "synthetic#size=128",
    "image_size=[128,128]",
    "patch_size=[64,64]",
    "samples_per_image=2",
    "batch_size=2",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs instead")
def test_without_a_gpu_it_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        "gpu_check: no GPU (torch.cuda.is_available() is False): nothing to check on this machine"
    ]


@pytest.mark.integration
def test_its_cases_run_on_the_cpu_and_fill_the_table(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--allow-cpu", "--epochs", "2", "--teacher-epochs", "1"]
    cmd += ["--fsd-sizes", "32,8", "--repeats", "1", "--workdir", str(tmp_path)]
    for kv in TINY:
        cmd += ["--set", kv]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| distil") or (line.startswith("| FSD ") and "ch |" in line)]
    assert len(rows) == 3 + 4
    single, amp, ddp = (dict(enumerate(c.strip() for c in row.split("|")[1:-1])) for row in rows[:3])
    # 4 training images, 2 per batch: 2 iterations per epoch in one process, 1 per rank on two ranks
    assert single[1] == amp[1] == "4 per rank" and ddp[1] == "2 per rank"
    for row in (single, amp, ddp):
        assert row[5] == "cpu"  # the critic trains on the trainer's device
        assert re.search(r"disc=-?\d+\.\d{3}", row[6]) and "fsd=" in row[6] and "seg=" in row[6]
    # same seed, same data: AMP is inactive on the CPU, so the two single-process runs end with the same losses
    assert single[6] == amp[6]
    fsd = [float(row.split("|")[-2]) for row in rows[3:]]
    assert fsd[0] == pytest.approx(fsd[1], rel=2e-2) and fsd[2] == pytest.approx(fsd[3], rel=2e-2)
