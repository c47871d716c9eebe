"""Experiment tracking: ``monai.bundle run training ... --tracking mlflow`` into a local store under ``output_dir``."""

import copy
import os
import subprocess

import pytest
from monai.bundle import ConfigWorkflow
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.utils import path_to_sqlite_uri

from conftest import config_parser
from test_bundle import CONFIGS, bundle_command


def _patched(root, monkeypatch, rank=None):
    """train.json as ``--tracking mlflow`` leaves it: MONAI's own patch, with its default settings."""
    monkeypatch.delenv("RANK", raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", str(rank))
    parser = config_parser(CONFIGS / "train.json", bundle_root=str(root))
    ConfigWorkflow.patch_bundle_tracking(parser, copy.deepcopy(DEFAULT_MLFLOW_SETTINGS))
    return parser


def test_tracking_is_off_by_default_and_on_rank_0_only_under_monais_patch(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    plain = config_parser(CONFIGS / "train.json", bundle_root=str(tmp_path / "plain"))
    assert plain.get_parsed_content("tracking#enabled") is False
    assert not (tmp_path / "plain").exists(), "deciding that tracking is off writes nothing"

    root = tmp_path / "tracked"
    parser = _patched(root, monkeypatch)
    # MONAI appended its handlers to the lists this bundle names (train#handlers, validate#handlers) ...
    for handlers in ("train#handlers", "validate#handlers"):
        assert parser[handlers][-1]["_target_"] == "MLFlowHandler", handlers
    # ... kept this bundle's store, in output_dir, and saved the executed config there
    assert parser.get_parsed_content("tracking_uri") == path_to_sqlite_uri(str(root / "eval" / "mlruns.db"))
    (saved,) = (root / "eval").glob("config_*.json")
    assert parser.get_parsed_content("tracking#config") == str(saved)
    assert parser.get_parsed_content("tracking#enabled") is True
    assert parser.get_parsed_content("is_not_rank0") is False

    # under torchrun, ranks other than 0 neither log nor keep MONAI's handlers (their _disabled_ is is_not_rank0)
    other = _patched(tmp_path / "rank1", monkeypatch, rank=1)
    assert other.get_parsed_content("is_not_rank0") is True
    assert other.get_parsed_content("tracking#enabled") is False
    assert other["train#handlers"][-1]["_disabled_"] == "@is_not_rank0"


def _history(client, run, key):
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


@pytest.mark.integration
def test_mlflow_tracking_records_losses_metrics_fingerprint_config_and_report(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, cwd = tmp_path / "bundle", tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "RANK"}
    cmd = bundle_command("training", ["train.json"], root) + ["--tracking", "mlflow"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]

    out = root / "eval"
    assert list(cwd.iterdir()) == [], "nothing may be written to the working directory"
    stores = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("mlruns*"))
    assert stores == [out.relative_to(tmp_path) / "mlruns", out.relative_to(tmp_path) / "mlruns.db"]

    client = MlflowClient(tracking_uri=path_to_sqlite_uri(str(out / "mlruns.db")))
    experiment = client.get_experiment_by_name("lightvessel")
    runs = {r.info.run_name.split("_")[0]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["student", "teacher"] and all(r.info.status == "FINISHED" for r in runs.values())
    student, teacher = runs["student"], runs["teacher"]

    # the teacher's fingerprint, as the teacher cache names it
    (cached,) = (root / "models" / "teacher").glob("teacher_*.pt")
    fingerprint = cached.stem.removeprefix("teacher_")
    assert student.data.params["teacher_fingerprint"] == fingerprint
    assert (
        teacher.info.run_name == f"teacher_{fingerprint}" and teacher.data.params["teacher_fingerprint"] == fingerprint
    )

    # every loss term once per iteration, with the values TensorBoard got; validation Dice once per epoch
    iterations = int(student.data.params["max_epochs"]) * int(student.data.params["epoch_length"])
    assert iterations == 4  # 2 epochs of 2 batches (4 images, batch size 2)
    for run, name, terms in (
        (student, "student", ("loss", "loss_seg", "loss_fsd", "loss_asd", "loss_disc")),
        (teacher, "teacher", ("loss",)),
    ):
        board = EventAccumulator(str(out / "tensorboard" / name))
        board.Reload()
        for key in (*terms, "val_mean_dice"):
            logged = _history(client, run, key)
            expected = [(e.step, e.value) for e in board.Scalars(key)]
            assert [s for s, _ in logged] == [s for s, _ in expected], (name, key)
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), (name, key)
    assert [s for s, _ in _history(client, student, "loss_seg")] == list(range(1, iterations + 1))
    assert [s for s, _ in _history(client, student, "val_mean_dice")] == [1, 2]
    assert 0 <= _history(client, student, "val_mean_dice")[-1][1] <= 1

    # the executed config (both runs) and the report (student), as written to output_dir
    (config,) = out.glob("config_*.json")
    files = {"student": [config, out / "report.md", out / "report.csv"], "teacher": [config]}
    for name, paths in files.items():
        run_id = runs[name].info.run_id
        assert sorted(a.path for a in client.list_artifacts(run_id)) == sorted(p.name for p in paths), name
        for path in paths:
            copy_ = client.download_artifacts(run_id, path.name, str(tmp_path / "download" / name))
            assert open(copy_, "rb").read() == path.read_bytes(), (name, path.name)
