"""Unlabelled images through the real command (2D and 3D), the resume fingerprint, and the XCA + ARCADE overlays."""

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from test_bundle_3d import OVERLAY as OVERLAY_3D
from test_bundle_3d import TINY_3D

from lightvessel_monai.data.datasets import label_scarce, xca_datalist
from lightvessel_monai.errors import DataError

from conftest import REPO, SHARED_DATA, config_parser
from test_bundle import CONFIGS, run_bundle

METHODS = REPO / "configs" / "methods"
XCA = SHARED_DATA / "XCA_coronary_vessels"
ARCADE = SHARED_DATA / "ARCADE_stenosis"


def grey_pngs(folder, count, size=128):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"frame{i}.png")
    return str(folder / "*.png")


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_function_matching_with_unlabelled_images_through_the_command_in_2d(tmp_path, mode):
    pattern = grey_pngs(tmp_path / "unlabelled", 3)
    proc = run_bundle(
        "training",
        ["train.json", str(METHODS / "fm_kd.json")],
        tmp_path / "bundle",
        {"unlabeled_glob": pattern, "mixup_prob": 0.5, "mixup_mode": mode},
    )
    log = proc.stdout + proc.stderr
    assert f"{mode} on 50% of each step's samples, lambda ~ Beta(1)" in log
    assert "pre-flight: images per split: 4 training, 2 validation, 3 unlabeled" in log
    assert "unlabelled images: 3, 2 per step beside 2 labelled" in log  # unlabeled_ratio 1 x batch_size 2
    assert "loss_kd" in log
    state = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)


@pytest.mark.integration
def test_pseudo_labels_on_unlabelled_volumes_through_the_command_in_3d(tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(2)
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    for i in range(2):
        volume = rng.normal(0, 100, (48, 48, 24)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, affine), folder / f"ct{i}.nii.gz")
    root = tmp_path / "bundle"
    extra = {**TINY_3D, "dataset_dir": root / "data" / "synthetic_ct_3d", "unlabeled_glob": str(folder / "*.nii.gz")}
    proc = run_bundle(
        "training", ["train.json", OVERLAY_3D, str(METHODS / "pseudo_label.json")], root, extra, tiny=False
    )
    log = proc.stdout + proc.stderr
    assert "2 unlabeled" in log and "unlabelled images: 2, 2 per step" in log
    assert "loss_pseudo_label" in log
    assert (root / "models" / "model.pt").is_file()


@pytest.mark.integration
def test_an_unreadable_unlabelled_image_is_a_one_line_pre_flight_error(tmp_path):
    pattern = grey_pngs(tmp_path / "unlabelled", 2)
    (tmp_path / "unlabelled" / "frame1.png").write_bytes(b"\x89PNG broken")
    proc = run_bundle(
        "training",
        ["train.json", str(METHODS / "kd.json")],
        tmp_path / "bundle",
        {"unlabeled_glob": pattern},
        check=False,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error")]
    assert len(errors) == 1 and "frame1.png" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "bundle" / "models" / "model.pt").exists()


def fingerprint(tmp_path, **overrides):
    parser = config_parser(
        CONFIGS / "train.json",
        METHODS / "kd.json",
        bundle_root=str(tmp_path / "bundle"),
        dataset_dir=str(tmp_path / "bundle" / "data"),
        **{"synthetic#num_train": 4, "synthetic#num_val": 2, "synthetic#size": 128, "patch_size": [64, 64]},
        **overrides,
    )
    return parser.get_parsed_content("run_fingerprint"), parser.get_parsed_content("teacher_fingerprint")


def test_the_resume_fingerprint_follows_the_unlabelled_list_and_the_teachers_does_not(tmp_path):
    grey_pngs(tmp_path / "a", 2)
    grey_pngs(tmp_path / "b", 3)
    run_none, teacher_none = fingerprint(tmp_path)
    run_a, teacher_a = fingerprint(tmp_path, unlabeled_glob=str(tmp_path / "a" / "*.png"))
    run_b, teacher_b = fingerprint(tmp_path, unlabeled_glob=str(tmp_path / "b" / "*.png"))
    run_zoom, _ = fingerprint(tmp_path, unlabeled_glob=str(tmp_path / "b" / "*.png"), unlabeled_zoom=1.5)
    assert len({run_none, run_a, run_b, run_zoom}) == 4
    assert teacher_none == teacher_a == teacher_b  # the teacher trains on the labels alone
    # a run without unlabelled images keeps the fingerprint it had before unlabelled images existed
    assert fingerprint(tmp_path, unlabeled_ratio=0.5)[0] == run_none


def test_label_scarce_moves_the_rest_of_the_training_images_to_unlabeled():
    datalist = {"training": [{"image": f"{i}.png", "label": f"{i}_gt.png"} for i in range(5)], "validation": [{}]}
    scarce = label_scarce(datalist, 2)
    assert [e["image"] for e in scarce["training"]] == ["0.png", "1.png"]
    assert scarce["unlabeled"] == [{"image": "2.png"}, {"image": "3.png"}, {"image": "4.png"}]
    assert scarce["validation"] == [{}] and len(datalist["training"]) == 5
    with pytest.raises(DataError, match="between 1 and 5"):
        label_scarce(datalist, 0)


@pytest.mark.parametrize("overlays", [["xca_arcade.json"], ["xca_arcade.json", "xca_scarce.json"]])
def test_the_arcade_overlays_parse_on_train_inference_and_evaluate(tmp_path, overlays):
    if not XCA.is_dir() or not ARCADE.is_dir():
        pytest.skip(f"XCA or ARCADE not found under {SHARED_DATA} (../shared is absent)")
    data = [REPO / "configs" / "data" / "xca.json"] + [REPO / "configs" / "data" / name for name in overlays]
    train = config_parser(CONFIGS / "train.json", *data, bundle_root=str(tmp_path))
    unlabelled = train.get_parsed_content("unlabeled#datalist")
    arcade = [e for e in unlabelled if "ARCADE" in e["image"]]
    assert len(arcade) == 500 and all(e["zoom"] == pytest.approx(1.1) for e in arcade)
    labelled = train.get_parsed_content("train#datalist")
    if "xca_scarce.json" in overlays:
        xca_unlabelled = [e for e in unlabelled if "ARCADE" not in e["image"]]
        assert len(labelled) == 10 and len(xca_unlabelled) == 20 and all("zoom" not in e for e in xca_unlabelled)
        assert {e["image"] for e in xca_unlabelled} == {e["image"] for e in xca_datalist(XCA)["training"][10:]}
    else:
        assert len(labelled) == 30
    inference = config_parser(CONFIGS / "inference.json", *data, bundle_root=str(tmp_path))
    assert len(inference.get_parsed_content("datalist")) == 40
    evaluate = config_parser(CONFIGS / "train.json", CONFIGS / "evaluate.json", *data, bundle_root=str(tmp_path))
    assert len(evaluate.get_parsed_content("validate#datalist")) == 10
