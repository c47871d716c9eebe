"""torchrun with two CPU ranks (gloo): the multi-GPU overlay, its gradient all-reduce and its rank-0 writers.

The end-to-end tests run ``torchrun --nproc_per_node=2 -m monai.bundle run training`` exactly as the README says, with
one test-only overlay that appends a last step to ``run``: each rank saves its own copy of the student and of the
distiller's trained parts to ``eval/rank_<k>.pt``. The ranks train on different shards, so equal copies mean the
gradients were averaged; a missing or different copy fails the test.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.bundle import ConfigParser
from test_bundle_3d import OVERLAY as SYNTHETIC_3D
from test_bundle_3d import TINY_3D

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.handlers import rank0_handlers
from lightvessel_monai.pipeline import distributed

from conftest import REPO
from test_bundle import CONFIGS, TINY

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dump_overlay(tmp_path, parts: dict[str, str]):
    """A test overlay: after training, every rank saves ``{part: state_dict}`` to ``eval/rank_<RANK>.pt``."""
    items = ", ".join(f"'{name}': {ref}.state_dict()" for name, ref in parts.items())
    path = tmp_path / "dump_ranks.json"
    save = f"$torch.save({{{items}}}, @output_dir + '/rank_' + os.environ['RANK'] + '.pt')"
    path.write_text(json.dumps({"+run": [save]}))
    return path


def _overrides(root):
    # 3 validation images: the shards are uneven (2 and 1), as they are for most real validation sets
    return {**TINY, "synthetic#num_val": 3, "bundle_root": str(root), "dataset_dir": str(root / "data")}


def _torchrun(configs, overrides, timeout=600):
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [*TORCHRUN, str(_free_port()), "-m", "monai.bundle", "run", "training", "--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{log[-6000:]}"
    return log


def _rank_states(eval_dir):
    states = [torch.load(eval_dir / f"rank_{k}.pt", weights_only=True) for k in range(2)]  # both ranks finished
    return states


def _assert_same(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: '{key}' differs between rank 0 and rank 1"


@pytest.mark.integration
def test_torchrun_lightvessel_two_cpu_ranks(tmp_path):
    root = tmp_path / "bundle"
    dump = _dump_overlay(tmp_path, {"student": "@network", "critic": "@lightvessel#asd#loss.discriminator"})
    overrides = _overrides(root)
    log = _torchrun([CONFIGS / "train.json", CONFIGS / "multi_gpu_train.json", dump], overrides)
    eval_dir = root / "eval"

    # the teacher stage ran once: one rank trained it, the other waited and reused the cache
    assert log.count("training the teacher first") == 1
    assert log.count("that another run cached while this one waited") == 1
    # rank 0 alone logs the iterations (StatsHandler) and writes the report
    assert log.count("Epoch: 2/2, Iter: 1/1 --") == 1
    assert log.count("| student |") == 1

    rank0, rank1 = _rank_states(eval_dir)
    _assert_same(rank0["student"], rank1["student"], "student")
    _assert_same(rank0["critic"], rank1["critic"], "critic")

    # the saved student is the plain network (no DDP "module." prefix) and loads
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")])
    parser.update({**overrides, "image_size": [128, 128], "patch_size": [64, 64], "progress_bar": False})
    parser["validate#handlers"] = []  # (set before anything is parsed: a change resets the parsed objects)
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))

    # the distributed validation Dice of the final weights equals a single-process evaluation of the same weights
    evaluator.network.load_state_dict(rank0["student"])
    evaluator.run()
    single = evaluator.state.metrics["val_mean_dice"]
    last = (eval_dir / "student_curve.csv").read_text().strip().splitlines()[-1]
    distributed_dice = float(last.split(",")[-1])
    assert len(evaluator.data_loader.dataset) == 3
    assert distributed_dice == pytest.approx(single, abs=2e-6)


@pytest.mark.integration
def test_torchrun_dskd_two_cpu_ranks(tmp_path):
    root = tmp_path / "bundle"
    dump = _dump_overlay(
        tmp_path,
        {
            "student": "@network",
            "self_teacher": "@distillation#dskd_psdl#loss#self_teacher",
            "side_heads": "@distillation#dskd_ddl#loss",
        },
    )
    method = REPO / "configs" / "methods" / "dskd.json"
    log = _torchrun([CONFIGS / "train.json", method, CONFIGS / "multi_gpu_train.json", dump], _overrides(root))
    assert "training the teacher" not in log  # DSKD has no teacher
    rank0, rank1 = _rank_states(root / "eval")
    for part in ("student", "self_teacher", "side_heads"):
        _assert_same(rank0[part], rank1[part], part)
    assert rank0["side_heads"], "DSKD's side heads hold parameters"
    # the EMA self-teacher moved away from the student it copied
    assert any(not torch.equal(rank0["self_teacher"][k], rank0["student"][k]) for k in rank0["student"])
    assert (root / "models" / "model.pt").is_file()


@pytest.mark.integration
def test_torchrun_gkd_two_cpu_ranks(tmp_path):
    """GKD: the teacher and the ACT stage run once, before the process group; the SAN stays identical on both ranks."""
    root = tmp_path / "bundle"
    dump = _dump_overlay(tmp_path, {"student": "@network", "semantics": "@gkd_semantics"})
    method = REPO / "configs" / "methods" / "gkd.json"
    overrides = {**_overrides(root), "gkd_psae_iterations": 2, "gkd_act_iterations": 2}
    log = _torchrun([CONFIGS / "train.json", method, CONFIGS / "multi_gpu_train.json", dump], overrides)
    assert log.count("training the teacher first") == 1
    assert log.count("cached the ACT headers") == 1 and log.count("reusing the cached ACT headers") == 1
    rank0, rank1 = _rank_states(root / "eval")
    _assert_same(rank0["student"], rank1["student"], "student")
    _assert_same(rank0["semantics"], rank1["semantics"], "GKD semantics (SAN, TAN, P-SAE)")


@pytest.mark.integration
def test_torchrun_lightvessel_3d_two_cpu_ranks(tmp_path):
    """The same machinery on 3D volumes (synthetic CT, MONAI UNet student and teacher)."""
    root = tmp_path / "bundle"
    dump = _dump_overlay(tmp_path, {"student": "@network", "critic": "@lightvessel#asd#loss.discriminator"})
    overrides = {
        **TINY_3D,
        "synthetic#num_train": 4,
        "synthetic#num_val": 3,
        "max_epochs": 2,
        "bundle_root": str(root),
        "dataset_dir": str(root / "data" / "synthetic_ct_3d"),
    }
    log = _torchrun([CONFIGS / "train.json", SYNTHETIC_3D, CONFIGS / "multi_gpu_train.json", dump], overrides)
    assert log.count("training the teacher first") == 1
    rank0, rank1 = _rank_states(root / "eval")
    _assert_same(rank0["student"], rank1["student"], "student")
    _assert_same(rank0["critic"], rank1["critic"], "critic")
    assert (root / "models" / "model.pt").is_file()


def _descendants(pid: int) -> list[int]:
    """The live descendants of ``pid``, read from /proc (children before grandchildren)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    parents[int(entry)] = int(fields[1])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _torchrun_command(configs, overrides):
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [*TORCHRUN, str(_free_port()), "-m", "monai.bundle", "run", "training", "--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


@pytest.mark.integration
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_killed_torchrun_run_resumes_mid_epoch_to_the_uninterrupted_weights(tmp_path, spatial_dims):
    """SIGKILL the whole process group of a 2-rank gloo run inside an epoch; the same command resumes on every rank.

    8 training images of batch 1 on 2 ranks make 4 iterations per epoch and rank; a resume state is saved before
    every 3rd batch, so the first one is inside the first epoch. The student and the critic end equal on both
    ranks and equal to an uninterrupted distributed run's (ResumableDistributedSampler: each rank skips what it had
    consumed of its own shard).
    """
    import signal
    import time

    parts = {"student": "@network", "critic": "@lightvessel#asd#loss.discriminator"}
    data = [SYNTHETIC_3D] if spatial_dims == 3 else []
    base = {**(TINY_3D if spatial_dims == 3 else TINY), "synthetic#num_train": 8, "synthetic#num_val": 2}
    base.update({"batch_size": 1, "max_epochs": 2, "resume_every_n_iterations": 3, "progress_bar": "False"})
    base["num_workers"] = 0  # augmentations in the main process: bit-exact (with workers, only order and position)
    reference = tmp_path / "reference"
    dump = _dump_overlay(tmp_path, parts)
    configs = [CONFIGS / "train.json", *data, CONFIGS / "multi_gpu_train.json", dump]
    _torchrun(configs, {**base, "bundle_root": reference, "dataset_dir": reference / "data"})
    (teacher,) = (reference / "models" / "teacher").glob("teacher_*.pt")

    root = tmp_path / "killed"
    overrides = {**base, "bundle_root": root, "dataset_dir": reference / "data", "teacher_checkpoint": teacher}
    command = _torchrun_command(configs, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    resume_dir = root / "models" / "resume"
    deadline = time.monotonic() + 300
    while not list(resume_dir.glob("student_*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    # torchrun and both ranks, as a scheduler's kill would (the ranks run in sessions of their own: torch elastic
    # starts them with start_new_session, so killing torchrun's process group alone leaves them training)
    for pid in [proc.pid, *_descendants(proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while _descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (state_file,) = resume_dir.glob("student_*.pt")
    state = torch.load(state_file, weights_only=True)
    iteration = state["trainer"]["iteration"]
    assert iteration % 4 != 0, f"the kill came at iteration {iteration}, an epoch boundary, not inside an epoch"
    assert int(state["sampler"]["consumed"]) == iteration % 4  # batch 1: one index per iteration and rank

    command[command.index("--master_port") + 1] = str(_free_port())
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-5000:]
    assert f"resumed from {state_file} at epoch 0, iteration {iteration}" in log
    expected, _ = _rank_states(reference / "eval")
    rank0, rank1 = _rank_states(root / "eval")
    for part in parts:
        _assert_same(rank0[part], rank1[part], part)
        _assert_same(rank0[part], expected[part], f"{part} against the uninterrupted run")


def test_the_overlay_outside_torchrun_is_a_one_line_error(tmp_path):
    files = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files]
    cmd += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error:")]
    assert len(errors) == 1 and "torchrun" in errors[0] and "multi_gpu_train.json" in errors[0]
    assert not (tmp_path / "models").exists()  # nothing was trained


# ----------------------------------------------------------------------------------- the all-reduce, in two processes


def _average_worker(rank: int, port: int, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        a = torch.nn.Parameter(torch.zeros(2, 3))
        b = torch.nn.Parameter(torch.zeros(4))
        c = torch.nn.Parameter(torch.zeros(1))  # a gradient on rank 1 only
        d = torch.nn.Parameter(torch.zeros(2))  # no gradient anywhere
        frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        a.grad = torch.full((2, 3), float(rank + 1))  # 1 and 2: mean 1.5
        b.grad = torch.arange(4.0) * (rank + 1)  # mean 1.5 * arange
        if rank == 1:
            c.grad = torch.tensor([4.0])  # counts zero on rank 0, as in DDP: mean 2
        frozen.grad = torch.full((2,), float(rank))  # not requires_grad: left alone
        distributed.average_gradients([a, b, c, d, frozen])
        own = torch.full((2,), float(rank + 10))
        distributed.broadcast_tensors([own])
        results[rank] = {
            "a": a.grad.clone(),
            "b": b.grad.clone(),
            "c": c.grad.clone(),
            "d": d.grad,
            "frozen": frozen.grad.clone(),
            "broadcast": own.clone(),
            "rank0": distributed.is_rank0(),
            "kept": len(rank0_handlers([_stats_handler(), "validation"])),
            "any": (distributed.any_rank(rank == 1), distributed.any_rank(False)),
        }
    finally:
        dist.destroy_process_group()


def _stats_handler():
    from monai.handlers import StatsHandler

    return StatsHandler(iteration_log=False)


def test_average_gradients_and_rank0_handlers_in_two_gloo_processes():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_average_worker, args=(_free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        r = results[rank]
        assert torch.equal(r["a"], torch.full((2, 3), 1.5))
        assert torch.equal(r["b"], torch.arange(4.0) * 1.5)
        assert torch.equal(r["c"], torch.tensor([2.0]))
        assert r["d"] is None
        assert torch.equal(r["frozen"], torch.full((2,), float(rank)))
        assert torch.equal(r["broadcast"], torch.full((2,), 10.0))  # rank 0's values everywhere
    assert results[0]["rank0"] and not results[1]["rank0"]
    assert results[0]["kept"] == 2 and results[1]["kept"] == 1  # the log writer is dropped on rank 1
    assert results[0]["any"] == results[1]["any"] == (True, False)  # a stop on rank 1 stops rank 0 too


def test_without_a_process_group_everything_is_single_process():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    distributed.average_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    net = torch.nn.Linear(2, 2)
    assert distributed.data_parallel(net) is net and distributed.unwrap(net) is net
    assert distributed.is_rank0() and distributed.get_world_size() == 1
    assert distributed.run_on_rank0(lambda x: x + 1, 1) == 2
    handlers = [_stats_handler()]
    assert rank0_handlers(handlers) == handlers


def test_require_torchrun_names_the_missing_variables(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigKeyError, match="WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        distributed.require_torchrun()
