"""The teacher cache under two concurrent writers: one trains and caches, the other waits and reuses it."""

import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO

# A process that asks the teacher stage for its checkpoint. Its trainer is a slow stand-in that writes a real state
# dict where the stage's CheckpointSaver would, and records that it ran: the cache and its lock are under test here.
WORKER = textwrap.dedent(
    """
    import logging, os, sys, time
    import torch
    from lightvessel_monai.pipeline.stages import TeacherStage

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


class _Recorder:
    """A teacher trainer that writes a known state dict as its best checkpoint, and counts its runs."""

    def __init__(self, best, source):
        self.best, self.source, self.runs = best, source, 0

    def run(self):
        self.runs += 1
        torch.save(self.source.state_dict(), self.best)


def test_the_stage_loads_the_checkpoint_into_the_teacher_once_trained_or_cached(tmp_path):
    from lightvessel_monai.pipeline.stages import TeacherStage

    torch.manual_seed(5)
    source, teacher = torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(1, 2, 3)
    trainer = _Recorder(str(tmp_path / "best.pt"), source)
    stage = TeacherStage(trainer, str(tmp_path / "teacher.pt"), trainer.best, teacher=teacher)
    assert stage.ensure() == str(tmp_path / "teacher.pt") and trainer.runs == 1
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), teacher.parameters(), strict=True))
    with torch.no_grad():  # a later run starts from other weights and reuses the cache without training
        teacher.weight.zero_()
    assert stage.ensure() == str(tmp_path / "teacher.pt") and trainer.runs == 1
    assert torch.equal(teacher.weight, source.weight)


def test_an_explicit_checkpoint_of_another_architecture_fails_in_preflight(tmp_path):
    from lightvessel_monai.errors import CheckpointMismatchError
    from lightvessel_monai.pipeline.stages import Preflight

    path = tmp_path / "teacher.pt"
    torch.save(torch.nn.Conv2d(1, 4, 3).state_dict(), path)
    teacher = torch.nn.Conv2d(1, 2, 3)
    preflight = Preflight({}, str(tmp_path), torch.nn.Conv2d(1, 2, 3), teacher=teacher, teacher_checkpoint=str(path))
    try:
        preflight.check()
    except CheckpointMismatchError as err:
        assert str(path) in str(err) and "shape mismatches" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a checkpoint of another shape was accepted")
    Preflight(
        {}, str(tmp_path), torch.nn.Conv2d(1, 2, 3), teacher=teacher, teacher_checkpoint=str(path), use_teacher=False
    ).check()


def test_a_disabled_stage_neither_trains_nor_loads_nor_reseeds(tmp_path):
    from lightvessel_monai.pipeline.stages import TeacherStage

    trainer = _Recorder(str(tmp_path / "best.pt"), torch.nn.Conv2d(1, 2, 3))
    stage = TeacherStage(trainer, str(tmp_path / "teacher.pt"), trainer.best, seed=0, enabled=False)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert stage.ensure() is None and trainer.runs == 0 and not (tmp_path / "teacher.pt").exists()
    assert torch.equal(torch.rand(3), expected)  # no set_determinism: a run without teacher keeps its random stream


@pytest.mark.integration
def test_two_real_runs_that_need_the_same_teacher_train_it_once(tmp_path):
    # two `monai.bundle run training` commands with their own outputs and one teacher folder (issue 31): the first
    # trains the teacher under the lock, the second, started while it trains, waits and reuses the cache
    import time

    from test_bundle import bundle_command

    shared = {"teacher_dir": tmp_path / "teachers", "dataset_dir": tmp_path / "data", "max_epochs": 1}
    shared["teacher_train#settings#max_epochs"] = 12  # long enough for the second command to arrive meanwhile
    procs, logs = [], []
    for name in ("first", "second"):
        own = {"ckpt_dir": tmp_path / name / "models", "output_dir": tmp_path / name / "eval"}
        log = (tmp_path / f"{name}.log").open("w")
        cmd = bundle_command("training", ["train.json"], tmp_path / name, {**shared, **own})
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True))
        logs.append(tmp_path / f"{name}.log")
        if name == "first":  # the second starts once the first holds the lock and trains
            deadline = time.monotonic() + 300
            while "training the teacher first" not in logs[0].read_text():
                assert procs[0].poll() is None and time.monotonic() < deadline, logs[0].read_text()[-3000:]
                time.sleep(0.2)
    for proc in procs:
        proc.wait(timeout=600)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], [t[-3000:] for t in texts]
    assert "training the teacher first" in texts[0] and "training the teacher first" not in texts[1]
    assert "cached while this one waited" in texts[1], texts[1][-3000:]
    stages = list((tmp_path / "teachers").glob("stage_*"))
    teachers = list((tmp_path / "teachers").glob("teacher_*.pt"))
    assert len(stages) == 1 and len(teachers) == 1 and teachers[0].stem.split("_")[1] == stages[0].name.split("_")[1]
    assert [p.name for p in stages[0].iterdir()] == ["teacher_best.pt"]  # one writer's files only
    for name in ("first", "second"):
        assert (tmp_path / name / "models" / "model_final.pt").is_file()
        assert not (tmp_path / name / "models" / "teacher").exists(), "a run wrote into its own teacher folder"
