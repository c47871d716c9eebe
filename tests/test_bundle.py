"""The MONAI bundle end to end: `python -m monai.bundle run ...` in subprocesses, as a user runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from conftest import REPO, SHARED_DATA

CONFIGS = REPO / "bundle" / "configs"
SCHEMA = SHARED_DATA.parent / "schemas" / "meta_schema_20240725.json"

TINY = {
    "synthetic#num_train": 4,
    "synthetic#num_val": 2,
    "synthetic#size": 128,
    "image_size": "[128,128]",
    "patch_size": "[64,64]",
    "samples_per_image": 2,
    "batch_size": 2,
    "max_epochs": 2,
    "teacher_train#settings#max_epochs": 1,
    "val_interval": 1,
    "asd_warmup": 1,
    "latency_repeats": 1,
    "progress_bar": "False",
}


def bundle_command(run_id, configs, root, extra=None, tiny=True):
    """``python -m monai.bundle run <run_id>`` on ``configs`` (names in bundle/configs, or paths) with overrides."""
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    overrides = {**(TINY if tiny else {}), "bundle_root": str(root), "dataset_dir": str(root / "data"), **(extra or {})}
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run_bundle(run_id, configs, root, extra=None, check=True, tiny=True):
    cmd = bundle_command(run_id, configs, root, extra, tiny)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{run_id} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_metadata_is_valid_against_the_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI bundle schema not found at {SCHEMA} (../shared is absent)")
    import jsonschema

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    for key in ("network_data_format", "teacher_data_format"):
        fmt = meta[key]
        assert fmt["inputs"]["image"]["channel_def"] and fmt["inputs"]["image"]["spatial_shape"]
        assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "vessel"}


def test_version_and_changelog_agree():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    versions = list(meta["changelog"])
    assert versions[0] == meta["version"], "the newest changelog entry comes first and is the bundle's version"
    as_tuples = [tuple(int(p) for p in v.split(".")) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True) and len(set(as_tuples)) == len(as_tuples)


def test_monai_verify_net_in_out_passes_with_its_defaults():
    """MONAI's own check builds network_def and runs it on the metadata's spatial_shape with n=1 (32x32 here)."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file"]
    cmd += ["configs/metadata.json", "--config_file", "configs/inference.json"]
    proc = subprocess.run(cmd, cwd=REPO / "bundle", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_configs_follow_bundle_conventions():
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    for key in ("bundle_root", "device", "dataset_dir", "network_def", "network", "preprocessing", "run", "training"):
        assert key in parser, key
    for key in ("train#trainer", "train#dataset", "train#handlers", "validate#evaluator", "val_interval"):
        assert key in parser, key
    assert isinstance(parser["train#handlers"], list)
    targets = [h.get("_target_", "") for h in parser["train#handlers"]]
    assert "CheckpointLoader" not in targets, "MONAI Label adds its own loader only when none is present"
    # a data overlay merges on top of the bundle config
    merged = ConfigParser()
    merged.read_config([str(CONFIGS / "train.json"), str(REPO / "configs" / "data" / "synthetic_2d.json")])
    assert merged["label_values"] == [0, 255] and merged["synthetic"]["size"] == 512
    inference = ConfigParser()
    inference.read_config(str(CONFIGS / "inference.json"))
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "evaluator", "run"):
        assert key in inference, key


@pytest.mark.integration
def test_training_inference_evaluate(tmp_path):
    root = tmp_path / "bundle"
    proc = run_bundle("training", ["train.json"], root)
    log = proc.stdout + proc.stderr
    assert "training the teacher first" in log
    for term in ("loss_seg", "loss_fsd", "loss_asd", "loss_disc"):
        assert term in log, f"{term} is not logged"
    model = root / "models" / "model.pt"
    teachers = list((root / "models" / "teacher").glob("teacher_*.pt"))
    assert model.is_file() and len(teachers) == 1
    assert not list((root / "models").glob("teacher*.pt")), "teacher weights must stay out of models/*.pt"
    state = torch.load(model, weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    student = parser.get_parsed_content("network_def")
    student.load_state_dict(state)
    assert sum(p.numel() for p in student.parameters()) < 500_000
    final = torch.load(root / "models" / "model_final.pt", weights_only=True)  # the last iteration's weights
    student.load_state_dict(final)
    report = (root / "eval" / "report.csv").read_text().splitlines()
    assert report[0].startswith("model,dice,params,cpu_latency_ms") and len(report) == 3
    assert not list((root / "models" / "resume").glob("student_*.pt")), "a finished run leaves no resume file"
    assert list((root / "eval" / "tensorboard" / "student").glob("events.out.tfevents.*"))

    # inference reads the student checkpoint back and writes PNG masks
    run_bundle("run", ["inference.json"], root, {"input_glob": str(root / "data" / "imagesTr" / "*.png")}, tiny=False)
    preds = sorted((root / "eval" / "predictions").glob("*_seg.png"))
    assert len(preds) == 6  # 4 training + 2 validation images, all in imagesTr as in MSD
    mask = np.asarray(Image.open(preds[0]))
    assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}

    # evaluate (overlay on train.json) computes Dice of the same checkpoint
    run_bundle("evaluating", ["train.json", "evaluate.json"], root)
    metrics = (root / "eval" / "metrics.csv").read_text()
    assert "val_mean_dice" in metrics
    assert len(list((root / "eval" / "evaluate").glob("*_seg.png"))) == 2


@pytest.mark.integration
def test_cached_teacher_reproducibility_and_bad_teacher(tmp_path):
    root = tmp_path / "bundle"
    run_bundle("training", ["train.json"], root, {"max_epochs": 1})
    first = torch.load(root / "models" / "model.pt", weights_only=True)
    first_report = (root / "eval" / "report.csv").read_text().splitlines()
    proc = run_bundle("training", ["train.json"], root, {"max_epochs": 1})
    log = proc.stdout + proc.stderr
    assert "reusing the cached teacher" in log and "training the teacher first" not in log
    # same seed, same data, same teacher: the same student, to the last bit
    second = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)
    second_report = (root / "eval" / "report.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in first_report] == [r.split(",")[:3] for r in second_report]

    # the student's checkpoint is not a teacher: one line, non-zero exit, nothing trained
    bad = run_bundle("training", ["train.json"], root, {"teacher_checkpoint": root / "models" / "model.pt"}, False)
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if "lightvessel_monai error" in line]
    assert len(lines) == 1 and "does not fit BasicUNet" in lines[0] and "model.pt" in lines[0]
    assert "Traceback" not in bad.stderr
    assert "Engine run resuming" not in bad.stdout + bad.stderr


@pytest.mark.integration
def test_train_teacher_overlay_retrains_only_the_teacher(tmp_path):
    root = tmp_path / "bundle"
    for _ in range(2):
        proc = run_bundle("training", ["train.json", "train_teacher.json"], root)
    assert "retraining the teacher" in proc.stdout + proc.stderr
    cached = list((root / "models" / "teacher").glob("teacher_*.pt"))
    assert len(cached) == 1 and (root / "models" / "teacher" / (cached[0].stem + ".json")).is_file()
    assert not (root / "models" / "model.pt").exists(), "no student is trained"


@pytest.mark.integration
def test_a_run_whose_interval_skips_the_last_epoch_saves_and_reports_its_own_student(tmp_path):
    # max_epochs 1 with val_interval 2: without a validation at the end no checkpoint would be written, and a
    # model.pt left by an earlier run would be reported as this run's result (no teacher cached: the teacher too)
    root = tmp_path / "bundle"
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    stale = {k: torch.zeros_like(v) for k, v in parser.get_parsed_content("network_def").state_dict().items()}
    (root / "models").mkdir(parents=True)
    torch.save(stale, root / "models" / "model.pt")
    run_bundle("training", ["train.json"], root, {"max_epochs": 1, "val_interval": 2})
    saved = torch.load(root / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(saved[k], stale[k]) for k in stale), "the stale model.pt was reported"
    assert list((root / "models" / "teacher").glob("teacher_*.pt")), "the teacher stage wrote no checkpoint"
    curve = (root / "eval" / "student_curve.csv").read_text().splitlines()
    assert len(curve) == 2 and curve[1].split(",")[:2] == ["2", "1"]  # one validation, after epoch 1 (2 iterations)


@pytest.mark.integration
def test_a_killed_run_resumes_its_own_state_and_another_run_leaves_it_alone(tmp_path):
    import signal
    import time

    root = tmp_path / "bundle"
    long_run = bundle_command("training", ["train.json"], root, {"max_epochs": 8, "val_interval": 1000})
    proc = subprocess.Popen(long_run, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_dir = root / "models" / "resume"
    deadline = time.monotonic() + 400
    while not list(resume_dir.glob("student_*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.3)  # into the next epoch, mid-way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = list(resume_dir.glob("student_*.pt"))
    assert len(states) == 1, "the killed run left no resume state"
    mine = states[0]
    before = mine.read_bytes()

    # a different run (another student) in the same bundle: it neither resumes nor touches the killed run's state
    other = run_bundle("training", ["train.json"], root, {"max_epochs": 1, "network_def#features": "[4,4,8,8,16,4]"})

    assert "resumed from" not in other.stdout + other.stderr
    assert mine.read_bytes() == before

    # the same command again resumes where it was killed, and finishes
    again = subprocess.run(long_run, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"resumed from {mine}" in log and "at epoch 0," not in log
    assert not mine.exists(), "a finished run removes its resume state"


@pytest.mark.integration
def test_other_data_under_the_same_file_names_trains_a_new_teacher(tmp_path):
    root = tmp_path / "bundle"
    run_bundle("training", ["train.json"], root, {"max_epochs": 1})
    (entry,) = list((root / "models" / "teacher").glob("teacher_*.json"))
    recorded = json.loads(entry.read_text())
    assert len(recorded["data_sha256"]) == 64

    # touched but unchanged files: still the same teacher (the content hash confirms it)
    image = root / "data" / "imagesTr" / "angio_0000.png"
    image.write_bytes(image.read_bytes())
    proc = run_bundle("training", ["train.json"], root, {"max_epochs": 1})
    assert "reusing the cached teacher" in proc.stdout + proc.stderr

    # the same names, other pixels (the synthetic cache itself stays valid: its files all exist)
    pixels = np.asarray(Image.open(image))
    Image.fromarray(np.ascontiguousarray(pixels[::-1])).save(image)
    proc = run_bundle("training", ["train.json"], root, {"max_epochs": 1})
    log = proc.stdout + proc.stderr
    assert "trained on other data under the same file names: retraining it" in log
    assert "reusing the cached teacher" not in log
    assert json.loads(entry.read_text())["data_sha256"] != recorded["data_sha256"]


def _files_under(folder):
    return {p for p in folder.rglob("*") if p.is_file()}


def test_prediction_names_cannot_escape_the_output_folder(tmp_path):
    """An input reached through ``..`` segments still writes its mask under ``output_dir/predictions``, named by the
    input's base name, and nothing anywhere else."""
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(inputs / "img.png")
    root = tmp_path / "bundle"
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    (root / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    before = _files_under(tmp_path)
    escaping_glob = str(inputs / "sub" / ".." / ".." / "in" / "*.png")  # globs to .../in/sub/../../in/img.png
    run_bundle("run", ["inference.json"], root, {"input_glob": escaping_glob}, tiny=False)
    written = _files_under(tmp_path) - before
    assert written == {root / "eval" / "predictions" / "img_seg.png"}
    assert np.asarray(Image.open(root / "eval" / "predictions" / "img_seg.png")).shape == (64, 64)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["lightvessel", "dskd"])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, method):
    """SIGKILL inside an epoch, then the same command: the final student equals an uninterrupted run's, bit for bit.

    8 images of batch 1 make 8 iterations per epoch; a resume state is saved before every 3rd batch, so the first one
    (after iteration 3) is inside the first epoch. LightVessel carries a critic and its optimiser, DSKD a self-teacher;
    the DSKD run also draws unlabelled images (their order, position and augmentation state) and mixes its batches.
    """
    import signal
    import time

    configs = ["train.json"] + ([] if method == "lightvessel" else [str(REPO / "configs" / "methods" / "dskd.json")])
    extra = {"synthetic#num_train": 8, "batch_size": 1, "max_epochs": 2, "resume_every_n_iterations": 3}
    if method == "dskd":
        folder = tmp_path / "unlabelled"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(5):  # 5 unlabelled images, 1 per step: the order runs out and is redrawn inside an epoch
            Image.fromarray(rng.integers(0, 255, (128, 128), dtype=np.uint8)).save(folder / f"u{i}.png")
        extra.update({"unlabeled_glob": str(folder / "*.png"), "mixup_prob": 0.5})
    reference = tmp_path / "reference"
    run_bundle("training", configs, reference, extra)
    extra = {**extra, "dataset_dir": reference / "data"}
    if method == "lightvessel":  # DSKD distils from the student itself and trains no teacher
        (teacher,) = (reference / "models" / "teacher").glob("teacher_*.pt")
        extra["teacher_checkpoint"] = teacher

    root = tmp_path / "killed"
    command = bundle_command("training", configs, root, extra)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_dir = root / "models" / "resume"
    deadline = time.monotonic() + 300
    while not list(resume_dir.glob("student_*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (state_file,) = resume_dir.glob("student_*.pt")
    iteration = torch.load(state_file, weights_only=True)["trainer"]["iteration"]
    assert iteration % 8 != 0, f"the kill came at iteration {iteration}, an epoch boundary, not inside an epoch"

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"iteration {iteration}" in again.stdout + again.stderr
    expected = torch.load(reference / "models" / "model.pt", weights_only=True)
    resumed = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
