"""`python -m lightvessel_monai.compare --target-data`: students and teacher evaluated on data they never train on.

The source is the tiny synthetic set of ``test_compare``; the target is another synthetic set, written to its own
folder from another generator seed, by an overlay that also names a network the comparison must ignore.
"""

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_compare import SEEDS, run_compare

from conftest import REPO, config_parser

METHODS = ["none", "kd"]
TARGET = "shifted"  # the target overlay's file stem names its columns
TARGET_IMAGES = {"num_train": 2, "num_val": 2, "size": 64}


def write_target(root):
    overlay = {
        "dataset_dir": str(root / "target_data"),
        "synthetic": TARGET_IMAGES,
        "datalist_file": "$lightvessel_monai.data.synthetic_2d.make_synthetic_angiograms("
        "@dataset_dir, seed=7, **@synthetic)",
        # a network the students could not be loaded into: the source's must be used
        "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "out_channels": 2, "features": [4] * 6},
    }
    path = root / f"{TARGET}.json"
    path.write_text(json.dumps(overlay))
    return path


def mtimes(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in sorted(out.glob("runs/*/result.json"))}


@pytest.fixture(scope="module")
def targeted(tmp_path_factory):
    """A comparison run first without a target, then again with one (reusing its runs), then a third time."""
    root = tmp_path_factory.mktemp("target")
    overlay = write_target(root)
    plain = run_compare(root, METHODS)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-6000:]
    out = root / "out"
    before = {"mtimes": mtimes(out), "results.md": (out / "results.md").read_text()}
    proc = run_compare(root, METHODS, extra=["--target-data", str(overlay)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root, overlay, before, proc


def _target_result(out, method, seed):
    return json.loads((out / "runs" / f"{method}_seed{seed}" / "targets" / f"{TARGET}.json").read_text())


def _entries(datalist):
    content = json.loads(datalist.read_text())
    return [{k: str(datalist.parent / v) for k, v in e.items()} for e in content["training"] + content["validation"]]


def naive_dice(network, entries):
    """Foreground Dice of each entry, by hand: min-max scaled image, argmax, 2|P&G| / (|P| + |G|).

    MONAI's image readers index PNGs (x, y), so the arrays are transposed as the bundle's LoadImaged gives them.
    """
    scores = []
    for entry in entries:
        image = np.asarray(Image.open(entry["image"]), dtype=np.float32).T
        label = np.asarray(Image.open(entry["label"])).T > 0
        x = (image - image.min()) / (image.max() - image.min())
        with torch.no_grad():
            pred = network(torch.from_numpy(x)[None, None]).argmax(1)[0].numpy() > 0
        scores.append(2.0 * (pred & label).sum() / (pred.sum() + label.sum()))
    return np.array(scores)


def test_target_dice_is_the_final_weights_on_every_target_image(targeted):
    root, _, _, _ = targeted
    out = root / "out"
    entries = _entries(root / "target_data" / "dataset.json")
    assert len(entries) == TARGET_IMAGES["num_train"] + TARGET_IMAGES["num_val"]  # both sections
    # the source's student network (the target overlay's network_def is ignored), with each run's saved weights
    network = config_parser(REPO / "bundle" / "configs" / "train.json").get_parsed_content("network_def").eval()
    for method in METHODS:
        for seed in SEEDS:
            result = _target_result(out, method, seed)
            assert result["images"] == [e["image"] for e in entries]
            network.load_state_dict(
                torch.load(out / "runs" / f"{method}_seed{seed}" / "models" / "model_final.pt", weights_only=True)
            )
            by_hand = naive_dice(network, entries)
            assert np.allclose([case["dice"] for case in result["cases"]], by_hand, atol=1e-5)
            assert math.isclose(result["metrics"]["dice"], by_hand.mean(), abs_tol=1e-5)
    teacher = json.loads((out / "teacher.json").read_text())
    assert len(teacher["targets"][TARGET]["cases"]) == len(entries)


def test_target_columns_sit_beside_the_source_columns(targeted):
    root, _, before, proc = targeted
    out = root / "out"
    with open(out / "results.csv") as f:
        table = {row["model"]: row for row in csv.DictReader(f)}
    columns = list(table["none"])
    assert columns.index("significant") < columns.index(f"{TARGET}_dice_mean")  # source columns first
    teacher = json.loads((out / "teacher.json").read_text())["targets"][TARGET]["metrics"]["dice"]
    assert math.isclose(float(table["teacher"][f"{TARGET}_dice_mean"]), teacher, rel_tol=1e-9)
    assert table["teacher"][f"{TARGET}_diff_vs_none"] == "-"
    for method in METHODS:
        values = [_target_result(out, method, s)["metrics"]["dice"] for s in SEEDS]
        row = table[method]
        assert math.isclose(float(row[f"{TARGET}_dice_mean"]), np.mean(values), rel_tol=1e-9)
        assert math.isclose(float(row[f"{TARGET}_dice_std"]), np.std(values, ddof=1), rel_tol=1e-9)
    # kd - none, paired seed by seed and target image by target image
    cases = {(m, s): np.array([c["dice"] for c in _target_result(out, m, s)["cases"]]) for m in METHODS for s in SEEDS}
    diffs = np.stack([cases[("kd", s)] - cases[("none", s)] for s in SEEDS])
    row = table["kd"]
    mean, low, high = (float(row[f"{TARGET}_{k}"]) for k in ("diff_vs_none", "diff_ci_low", "diff_ci_high"))
    assert math.isclose(mean, diffs.mean(), rel_tol=1e-9, abs_tol=1e-12)
    assert diffs.min() - 1e-12 <= low <= mean <= high <= diffs.max() + 1e-12
    assert row[f"{TARGET}_significant"] == ("yes" if low > 0 or high < 0 else "no")
    with open(out / "runs.csv") as f:
        runs = {(r["method"], int(r["seed"])): float(r[f"{TARGET}_dice"]) for r in csv.DictReader(f)}
    assert runs[("kd", 1)] == round(_target_result(out, "kd", 1)["metrics"]["dice"], 4)
    markdown = (out / "results.md").read_text()
    summary, paired = markdown.split("Dice difference from `none`")
    assert f"| Dice | {TARGET} Dice | IoU |" in summary and f"{float(row[f'{TARGET}_dice_mean']):.4f} ± " in summary
    assert f"| {TARGET} Dice | {TARGET} Dice − none | {TARGET} 95% interval | {TARGET} significant |" in paired
    assert f"{mean:+.4f}" in paired and "4 images" in summary
    assert markdown != before["results.md"]
    assert f"on {TARGET} " in proc.stdout
    with Image.open(out / "dice.png") as image:  # the source's panel and the target's
        assert image.format == "PNG" and image.size[0] >= 2 * image.size[1]


def test_a_target_never_changes_training_and_its_evaluation_is_cached(targeted):
    root, overlay, before, proc = targeted
    out = root / "out"
    # the runs trained without the target were reused as they were, not retrained
    assert mtimes(out) == before["mtimes"] and len(before["mtimes"]) == len(METHODS) * len(SEEDS)
    assert proc.stderr.count("finished before, reusing") == len(METHODS) * len(SEEDS)
    # no target image is in the source's datalists (the only images the students and the teacher train on)
    source = {e["image"] for e in _entries(root / "data" / "dataset.json")}
    target = set(_target_result(out, "none", 0)["images"])
    assert target and not source & target
    assert all(path.startswith(str(root / "target_data") + os.sep) for path in target)
    # a third run evaluates nothing again
    cached = {p: p.stat().st_mtime_ns for p in sorted(out.glob(f"**/targets/{TARGET}.json"))}
    assert len(cached) == len(METHODS) * len(SEEDS) + 1  # the runs and the teacher
    again = run_compare(root, METHODS, extra=["--target-data", str(overlay)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in cached} == cached


def test_a_target_evaluation_follows_the_weights_it_is_keyed_by(targeted, tmp_path):
    """In process: the cached file is returned while the weights are the same, recomputed when they change."""
    from lightvessel_monai.compare.runs import TargetData, _load_weights, build_parser
    from lightvessel_monai.pipeline.config_files import train_config

    root, overlay, _, _ = targeted
    out = root / "out"
    overrides = {"bundle_root": str(root / "bundle"), "dataset_dir": str(root / "data")}
    target = TargetData(overlay, [train_config()], overrides, tmp_path / "targets")
    target.prepare()
    source = build_parser([train_config()], overrides)
    model = tmp_path / "model.pt"
    shutil.copy(out / "runs" / "none_seed0" / "models" / "model_final.pt", model)

    def load():
        return _load_weights(source.get_parsed_content("network"), model)

    first = target.evaluate(load, model, tmp_path)
    assert np.allclose(
        [c["dice"] for c in first["cases"]], [c["dice"] for c in _target_result(out, "none", 0)["cases"]]
    )

    def must_not_load():
        raise AssertionError("a cached evaluation loaded the network")

    assert target.evaluate(must_not_load, model, tmp_path) == first
    weights = torch.load(model, weights_only=True)
    weights["final_conv.bias"] += torch.tensor([1e4, -1e4])  # background wins everywhere: no vessel found
    torch.save(weights, model)
    emptied = target.evaluate(load, model, tmp_path)
    assert emptied["key"] != first["key"] and [c["dice"] for c in emptied["cases"]] == [0.0] * len(first["cases"])


def test_bad_target_overlays_are_one_line_errors_before_training(tmp_path, capsys):
    from lightvessel_monai.compare.runs import main

    proc = run_compare(tmp_path, ["none"], extra=["--target-data", "nosuchtarget"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "--target-data" in lines[0] and "nosuchtarget" in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "bundle" / "models").exists() and not (tmp_path / "out" / "runs").exists()
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]")
    rgb = tmp_path / "rgb.json"
    rgb.write_text(json.dumps({"in_channels": 3}))
    for path, message in ((listed, "must be a JSON mapping"), (rgb, "in_channels 3, but the source's networks have 1")):
        args = ["--methods", "none", "--budget", "1", "--output_dir", str(tmp_path / "o"), "--target-data", str(path)]
        assert main([*args, "--set", f"bundle_root={tmp_path / 'bundle'}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and message in err[0], err
    assert not (tmp_path / "bundle" / "models").exists()


@pytest.mark.integration
def test_the_gkd_protocol_runs_end_to_end_on_a_tiny_budget(tmp_path):
    """none and gkd on a synthetic source, scored on a synthetic target: GKD's ACT stage runs once for both seeds
    (cached beside the shared teacher), its terms train, and the target columns hold its row."""
    overlay = write_target(tmp_path)
    act = ["--set", "gkd_psae_iterations=2", "--set", "gkd_act_iterations=2"]
    # the source's data must not follow the training seed (as synthetic_2d_xca.json's data_seed): ACT is keyed by it
    fixed = "$lightvessel_monai.data.synthetic_2d.make_synthetic_angiograms(@dataset_dir, seed=0, **@synthetic)"
    act += ["--set", f"datalist_file={fixed}"]
    proc = run_compare(tmp_path, ["none", "gkd"], extra=["--target-data", str(overlay), *act])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = tmp_path / "out"
    teacher = json.loads((out / "teacher.json").read_text())
    caches = sorted(p.name for p in (tmp_path / "bundle" / "models" / "teacher").glob("act_*.pt"))
    assert len(caches) == 1, caches  # one ACT for every seed: its key has no training seed
    assert os.path.dirname(teacher["checkpoint"]) == str(tmp_path / "bundle" / "models" / "teacher")
    for seed in SEEDS:
        result = json.loads((out / "runs" / f"gkd_seed{seed}" / "result.json").read_text())
        for term in ("gkd_intra", "gkd_inter", "gkd_cross", "gkd_align"):
            assert math.isfinite(result["final_losses"][f"loss_{term}"]), term
        assert 0.0 <= _target_result(out, "gkd", seed)["metrics"]["dice"] <= 1.0
    with open(out / "results.csv") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    assert rows["gkd"][f"{TARGET}_dice_mean"] != "" and rows["gkd"][f"{TARGET}_diff_vs_none"] != ""
