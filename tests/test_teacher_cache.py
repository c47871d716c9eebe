"""The teacher cache under two concurrent writers: one trains and caches, the other waits and reuses it."""

import subprocess
import sys
import textwrap

import torch

from conftest import REPO

# A process that asks the teacher stage for its checkpoint. Its trainer is a slow stand-in that writes a real state
# dict where the stage's CheckpointSaver would, and records that it ran: the cache and its lock are under test here.
WORKER = textwrap.dedent(
    """
    import logging, os, sys, time
    import torch
    from lightvessel_monai.stages import TeacherStage

    root, name = sys.argv[1], sys.argv[2]
    best = os.path.join(root, "stage", "teacher_best.pt")

    class SlowTrainer:
        def run(self):
            with open(os.path.join(root, "trainings.log"), "a") as log:
                log.write(name + "\\n")
            os.makedirs(os.path.dirname(best), exist_ok=True)
            time.sleep(2.0)  # long enough for the other process to arrive while this one trains
            torch.manual_seed(0)
            torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), best)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    open(os.path.join(root, "ready_" + name), "w").close()
    while not all(os.path.exists(os.path.join(root, "ready_" + n)) for n in ("a", "b")):
        time.sleep(0.01)  # start together
    stage = TeacherStage(SlowTrainer(), os.path.join(root, "teacher_x.pt"), best)
    print("checkpoint", stage.ensure())
    """
)


def test_two_concurrent_runs_train_the_teacher_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in outputs]
    trainings = (tmp_path / "trainings.log").read_text().split()
    assert len(trainings) == 1, f"the teacher was trained {len(trainings)} times"
    checkpoint = tmp_path / "teacher_x.pt"
    assert all(f"checkpoint {checkpoint}" in out.decode() for out, _ in outputs)
    waited = [err.decode() for _, err in outputs if "cached while this one waited" in err.decode()]
    assert len(waited) == 1, "the second run must reuse the first one's teacher"
    torch.manual_seed(0)
    expected = torch.nn.Conv2d(1, 2, 3).state_dict()
    cached = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(cached[k], expected[k]) for k in expected)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"
