"""`python -m lightvessel_monai.compare` end to end on a tiny synthetic budget, as a user runs it."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

METHODS = ["none", "kd", "at", "cwd", "skd", "emkd", "dskd", "dskd_kd", "lightvessel"]
VARIANT = "kd+kd_weight=0.5"  # a method with its own override, compared with the same none runs
COMPARED = [*METHODS, VARIANT]
GRAD_INTERVAL = 2  # every run records its terms' gradient norms at iterations 2 and 4
GRAD_SET = ["--set", f"term_grad_interval={GRAD_INTERVAL}"]
SEEDS = [0, 1]
BUDGET = 3  # iterations; with 4 training images and batch 2 this is 2 epochs of 2 iterations


def tiny_sets(root):
    sets = {
        "bundle_root": str(root / "bundle"),
        "dataset_dir": str(root / "data"),
        "synthetic#num_train": 4,
        "synthetic#num_val": 2,
        "synthetic#size": 64,
        "image_size": [64, 64],
        "patch_size": [32, 32],
        "samples_per_image": 2,
        "batch_size": 2,
        "teacher_train#settings#max_epochs": 1,
        "val_interval": 1,
        "asd_warmup": 1,
    }
    args = []
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


def _case_dice(out, method, seed):
    result = json.loads((out / "runs" / f"{method}_seed{seed}" / "result.json").read_text())
    return np.array([case["dice"] for case in result["cases"]], dtype=np.float64)


def run_compare(root, methods, extra=()):
    cmd = [sys.executable, "-m", "lightvessel_monai.compare", "--methods", ",".join(methods)]
    cmd += ["--seeds", ",".join(map(str, SEEDS)), "--budget", str(BUDGET), "--output_dir", str(root / "out")]
    cmd += ["--latency_repeats", "1", *tiny_sets(root), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    proc = run_compare(root, COMPARED, extra=GRAD_SET)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root, proc


def test_every_method_and_seed_is_trained_for_the_same_budget(comparison):
    root, _ = comparison
    out = root / "out"
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert sorted((r["method"], int(r["seed"])) for r in runs) == sorted((m, s) for m in COMPARED for s in SEEDS)
    # 4 training images, batch 2 -> 2 iterations per epoch; a budget of 3 rounds up to 2 epochs = 4 iterations
    assert {int(r["iterations"]) for r in runs} == {4}
    for r in runs:
        for metric in ("dice", "iou", "sensitivity", "specificity", "accuracy", "cldice"):
            assert 0.0 <= float(r[metric]) <= 1.0, (r["method"], metric, r[metric])
    teacher = json.loads((out / "teacher.json").read_text())
    results = [json.loads((out / "runs" / f"{m}_seed{s}" / "result.json").read_text()) for m in COMPARED for s in SEEDS]
    # one teacher checkpoint, shared by every run that uses a teacher
    assert Path(teacher["checkpoint"]).is_file()
    # the distillation terms of each method were logged by the trainer
    losses = {r["method"]: set(r["final_losses"]) for r in results}
    assert losses["none"] == {"loss", "loss_seg"}
    assert {"loss_fsd", "loss_asd", "loss_disc"} <= losses["lightvessel"]
    assert len(losses["emkd"] - {"loss", "loss_seg"}) == 3
    # different seeds give different students
    dice = {(r["method"], r["seed"]): r["metrics"]["dice"] for r in results}
    seeds_differ = [dice[(m, 0)] != dice[(m, 1)] for m in METHODS]
    assert any(seeds_differ)


def test_tables_and_figures_are_written(comparison):
    root, proc = comparison
    out = root / "out"
    with open(out / "results.csv") as f:
        table = {row["model"]: row for row in csv.DictReader(f)}
    assert list(table) == ["teacher", *COMPARED]
    for name in COMPARED:
        runs = [json.loads((out / "runs" / f"{name}_seed{s}" / "result.json").read_text()) for s in SEEDS]
        values = [r["metrics"]["dice"] for r in runs]
        assert math.isclose(float(table[name]["dice_mean"]), np.mean(values), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(float(table[name]["dice_std"]), np.std(values, ddof=1), rel_tol=1e-9, abs_tol=1e-12)
        assert int(table[name]["params"]) < int(table["teacher"]["params"])
        assert float(table[name]["gflops"]) < float(table["teacher"]["gflops"])
    # the paired difference from none: per seed and case, the method's Dice minus none's, averaged
    none_cases = {s: _case_dice(out, "none", s) for s in SEEDS}
    for name in COMPARED[1:]:
        diffs = np.stack([_case_dice(out, name, s) - none_cases[s] for s in SEEDS])
        diffs = diffs[:, np.isfinite(diffs).all(axis=0)]
        row = table[name]
        assert math.isclose(float(row["diff_vs_none"]), diffs.mean(), rel_tol=1e-9, abs_tol=1e-12)
        low, high = float(row["diff_ci_low"]), float(row["diff_ci_high"])
        assert diffs.min() - 1e-12 <= low <= float(row["diff_vs_none"]) <= high <= diffs.max() + 1e-12
        assert row["significant"] == ("yes" if low > 0 or high < 0 else "no") and row["paired_seeds"] == "2"
        assert float(row["dice_ci_low"]) <= float(row["dice_mean"]) <= float(row["dice_ci_high"])
    assert table["none"]["significant"] == "-" and table["teacher"]["diff_vs_none"] == "-"
    markdown = (out / "results.md").read_text()
    summary, paired = markdown.split("Dice difference from `none`")
    paired, gradients = paired.split("Gradient norm of each weighted term")
    assert summary.count("\n| ") == len(COMPARED) + 1  # header line starts the string; one row per model after it
    assert paired.count("\n| ") == len(COMPARED)  # header + one row per method but none
    assert gradients.count("\n| ") == len(COMPARED) + 1  # header + one row per method, none included
    assert "±" in markdown and "results.md" not in proc.stderr
    # one line per run, not one per student iteration (StatsHandler's logger is silenced during the runs)
    assert "loss_seg:" not in proc.stdout + proc.stderr
    for png in [out / "dice.png", out / "overlays" / "case_0.png", out / "overlays" / "case_1.png"]:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_a_variant_runs_with_its_own_override_and_gradient_norms_are_recorded(comparison):
    root, _ = comparison
    out = root / "out"
    variant = json.loads((out / "runs" / f"{VARIANT}_seed0" / "result.json").read_text())
    plain = json.loads((out / "runs" / "kd_seed0" / "result.json").read_text())
    # the total the trainer logged is seg + 0.5 kd for the variant, seg + 1.0 kd for the plain method
    for result, weight in ((variant, 0.5), (plain, 1.0)):
        losses = result["final_losses"]
        assert losses["loss"] == pytest.approx(losses["loss_seg"] + weight * losses["loss_kd"], rel=1e-5)
    assert variant["method"] == VARIANT
    # medians of the norms measured every GRAD_INTERVAL iterations: one entry per weighted term, seg included
    assert set(variant["term_grad_norms"]) == {"seg", "kd"} and variant["term_grad_norms"]["kd"] > 0
    assert set(json.loads((out / "runs" / "none_seed0" / "result.json").read_text())["term_grad_norms"]) == {"seg"}
    lightvessel = json.loads((out / "runs" / "lightvessel_seed1" / "result.json").read_text())["term_grad_norms"]
    assert set(lightvessel) == {"seg", "fsd", "asd"} and all(v >= 0 for v in lightvessel.values())


def test_method_lists_and_variants_are_parsed_as_written():
    from lightvessel_monai.compare.runs import run_folder, split_methods, split_variant
    from lightvessel_monai.errors import ConfigKeyError

    assert split_methods('none, kd ,cwd+cwd_pairs=[1,2]+x={"a":1,"b":2},,lightvessel') == [
        "none",
        "kd",
        'cwd+cwd_pairs=[1,2]+x={"a":1,"b":2}',
        "lightvessel",
    ]
    assert split_variant("lightvessel") == ("lightvessel", {})
    assert split_variant("lightvessel+asd_weight=1e+3+asd#warmup_iterations=5+tag=fast") == (
        "lightvessel",
        {"asd_weight": 1000.0, "asd#warmup_iterations": 5, "tag": "fast"},
    )
    with pytest.raises(ConfigKeyError, match="is not KEY=JSON"):
        split_variant("kd+0.5")
    assert run_folder(Path("o"), 'cwd+p=[1, "a"]', 2) == Path("o/runs/cwd+p=_1,__a___seed2")


def test_the_combined_figure_reads_two_comparisons(comparison):
    root, _ = comparison
    out = root / "out"
    script = REPO / "benchmarks" / "plot_comparison.py"
    cmd = [sys.executable, str(script), f"XCA={out / 'results.csv'}", f"DRIVE={out / 'results.csv'}"]
    proc = subprocess.run([*cmd, "--output", str(out / "both.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| XCA |") or line.startswith("| DRIVE |")]
    assert len(rows) == 2 * len(COMPARED)
    with Image.open(out / "both.png") as image:
        assert image.format == "PNG" and image.size[0] > 2 * image.size[1]
    missing = subprocess.run(
        [*cmd[:2], f"X={root / 'nope.csv'}", "--output", str(out / "x.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "nope.csv does not exist" in missing.stderr


def test_a_finished_comparison_is_reused_not_retrained(comparison):
    root, _ = comparison
    result = root / "out" / "runs" / "none_seed0" / "result.json"
    before = result.stat().st_mtime_ns
    proc = run_compare(root, ["none"], extra=GRAD_SET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result.stat().st_mtime_ns == before


def test_unknown_method_is_a_one_line_error(tmp_path):
    proc = run_compare(tmp_path, ["none", "nosuchmethod"])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchmethod" in lines[0] and "lightvessel" in lines[0], proc.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_every_method_trains_and_is_compared_in_3d(tmp_path):
    """The 3D overlay (MONAI UNet student, sliding-window validation) with every method, one seed, two iterations."""
    sets = {
        "bundle_root": str(tmp_path / "bundle"),
        "synthetic#num_train": 2,
        "synthetic#num_val": 1,
        "synthetic#shape": [64, 64, 32],
        "patch_size": [32, 32, 32],
        "image_size": [48, 48, 32],
        "samples_per_image": 1,
        "batch_size": 2,
        "teacher_max_epochs": 1,
        "val_interval": 1,
        "asd_warmup": 0,
        "num_workers": 0,
    }
    data = str(REPO / "configs" / "data" / "synthetic_3d.json")
    cmd = [sys.executable, "-m", "lightvessel_monai.compare", "--data", data]
    cmd += ["--methods", ",".join(METHODS), "--seeds", "0", "--budget", "2", "--output_dir", str(tmp_path / "out")]
    cmd += ["--latency_repeats", "1", "--overlays", "1"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = tmp_path / "out"
    for method in METHODS:
        result = json.loads((out / "runs" / f"{method}_seed0" / "result.json").read_text())
        assert result["iterations"] == 2
        terms = set(result["final_losses"]) - {"loss", "loss_seg", "loss_disc"}
        assert (len(terms) == 0) == (method == "none"), (method, terms)
        prediction = np.load(out / "runs" / f"{method}_seed0" / "prediction_0.npy")
        assert prediction.ndim == 3  # the whole preprocessed validation volume, through the sliding window
    with Image.open(out / "overlays" / "case_0.png") as image:
        assert image.format == "PNG"


def test_an_overlay_that_extends_another_is_loaded_after_its_base(tmp_path):
    from lightvessel_monai.compare.runs import method_config
    from lightvessel_monai.errors import ConfigKeyError

    methods = REPO / "configs" / "methods"
    assert method_config("dskd_kd") == [methods / "dskd.json", methods / "dskd_kd.json"]
    assert method_config("kd+kd_weight=0.5") == [methods / "kd.json"]
    # a private copy of the methods folder: a chain of two, a missing base, a loop
    folder = tmp_path / "configs" / "methods"
    folder.mkdir(parents=True)
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bundle" / "configs" / "train.json").write_text("{}")
    (folder / "a.json").write_text('{"distillation": {}}')
    (folder / "b.json").write_text('{"_extends_": "a.json", "+distillation": {}}')
    (folder / "c.json").write_text('{"_extends_": "b.json"}')
    (folder / "d.json").write_text('{"_extends_": "nope.json"}')
    (folder / "e.json").write_text('{"_extends_": "f.json"}')
    (folder / "f.json").write_text('{"_extends_": "e.json"}')
    assert [p.name for p in method_config("c", tmp_path)] == ["a.json", "b.json", "c.json"]
    for name in ("d", "e"):
        with pytest.raises(ConfigKeyError, match="_extends_"):
            method_config(name, tmp_path)


def test_a_comment_enters_no_run_key_and_an_old_key_is_recognised():
    from lightvessel_monai.compare.runs import run_keys

    settings = {"configs": ["a.json"], "method_config": [{"_comment": "one", "kd_weight": 1.0}], "seed": 0}
    edited = {**settings, "method_config": [{"_comment": "two", "kd_weight": 1.0, "x": {"_comment_y": "z"}}]}
    changed = {**settings, "method_config": [{"_comment": "one", "kd_weight": 2.0}]}
    key, (legacy,) = run_keys(settings)  # no module path in it: no separate key from before the layout
    assert run_keys(edited)[0] != key  # "x": {} is a real key, even when it holds only a comment
    assert run_keys({**edited, "method_config": [{"_comment": "two", "kd_weight": 1.0}]})[0] == key
    assert run_keys(changed)[0] != key
    # the legacy key is the one stored runs have: every setting and comment hashed
    assert legacy != key
    assert run_keys({**settings, "method_config": [{"_comment": "two", "kd_weight": 1.0}]})[1] != (legacy,)


@pytest.mark.parametrize("method", ["gkd", "cwd", "dskd"])
def test_a_run_stored_before_the_package_layout_is_recognised(method):
    # tests/data/overlays_before_layout holds the overlays (comments removed) as they named modules before issue 29's
    # layout moved them (lightvessel_monai.features, .act, .networks.msan, .losses.GKD...): their runs are adopted
    from lightvessel_monai.compare.runs import run_keys, without_comments

    before = json.loads((REPO / "tests" / "data" / "overlays_before_layout" / f"{method}.json").read_text())
    now = json.loads((REPO / "configs" / "methods" / f"{method}.json").read_text())
    assert without_comments(now) != before  # the paths did move
    settings = {"configs": [f"{method}.json"], "seed": 0}
    stored_key = run_keys({**settings, "method_config": [before]})[0]
    key, former = run_keys({**settings, "method_config": [now]})
    assert key != stored_key and stored_key in former
    edited = {**now, "gkd_weight_typo": 1.0}
    assert stored_key not in run_keys({**settings, "method_config": [edited]})[1]  # any other change retrains


def test_editing_a_method_comment_reuses_the_stored_run(tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(REPO / "bundle", root / "bundle")
    shutil.copytree(REPO / "configs", root / "configs")
    extra = ["--config_root", str(root)]
    proc = run_compare(tmp_path, ["none"], extra=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = tmp_path / "out" / "runs" / "none_seed0" / "result.json"
    before = result.stat().st_mtime_ns
    overlay = root / "configs" / "methods" / "none.json"
    content = json.loads(overlay.read_text())
    content["_comment"] = "edited"
    overlay.write_text(json.dumps(content))
    proc = run_compare(tmp_path, ["none"], extra=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result.stat().st_mtime_ns == before


def test_compare_and_the_bundle_command_train_the_same_student(comparison, tmp_path):
    """compare runs the bundle's own plan: the same method, data, seed and budget through `python -m monai.bundle run
    training` gives bit-equal final weights."""
    import torch

    from lightvessel_monai.compare.runs import NEVER_STEP, method_config

    from test_bundle import run_bundle

    root, _ = comparison
    run_dir = root / "out" / "runs" / "kd_seed1"
    result = json.loads((run_dir / "result.json").read_text())
    epochs = math.ceil(BUDGET / 2)  # 4 training images, batch 2: 2 iterations per epoch
    assert result["iterations"] == 2 * epochs
    items = tiny_sets(root)[1::2]  # the "KEY=VALUE" of each --set
    extra = {item.partition("=")[0]: item.partition("=")[2] for item in items}
    extra.update(
        {
            "seed": 1,
            "max_epochs": epochs,
            "teacher_checkpoint": result["teacher_checkpoint"],
            "teacher_dir": str(Path(result["teacher_checkpoint"]).parent),
            "val_interval": NEVER_STEP,
            "progress_bar": False,
            "term_grad_interval": GRAD_INTERVAL,
            "latency_repeats": 1,
            "ckpt_dir": str(tmp_path / "models"),
            "resume_dir": str(tmp_path / "resume"),
            "output_dir": str(tmp_path / "eval"),
        }
    )
    configs = ["train.json", *(str(p) for p in method_config("kd"))]
    run_bundle("training", configs, Path(extra.pop("bundle_root")), extra=extra, tiny=False)
    from_compare = torch.load(run_dir / "models" / "model_final.pt", weights_only=True)
    from_command = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)
    assert from_compare.keys() == from_command.keys()
    assert all(torch.equal(from_compare[k], from_command[k]) for k in from_compare)
