"""The same bundle on 3D CT volumes, with only the data overlay changed."""

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO
from test_bundle import run_bundle

OVERLAY = str(REPO / "configs" / "data" / "synthetic_3d.json")

TINY_3D = {
    "synthetic#num_train": 2,
    "synthetic#num_val": 1,
    "synthetic#shape": "[48,48,24]",
    "patch_size": "[32,32,16]",
    "image_size": "[32,32,32]",
    "samples_per_image": 1,
    "batch_size": 2,
    "max_epochs": 1,
    "teacher_train#settings#max_epochs": 1,
    "val_interval": 1,
    "asd_warmup": 0,
    "latency_repeats": 1,
    "progress_bar": "False",
    "network_def#channels": "[4,8,8,16]",
    "teacher_def#channels": "[4,8,8,16,16]",
}


@pytest.mark.integration
def test_3d_training_and_inference_back_in_the_original_space(tmp_path):
    root = tmp_path / "bundle"
    data = root / "data" / "synthetic_ct_3d"
    proc = run_bundle("training", ["train.json", OVERLAY], root, {**TINY_3D, "dataset_dir": data}, tiny=False)
    log = proc.stdout + proc.stderr
    for term in ("loss_seg", "loss_fsd", "loss_asd", "loss_disc"):
        assert term in log, f"{term} is not logged in 3D"
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert any(v.ndim == 5 for v in state.values()), "the student is a 3D network"

    overrides = {"dataset_dir": data, "network_def#channels": TINY_3D["network_def#channels"]}
    run_bundle("run", ["inference.json", OVERLAY], root, overrides, tiny=False)
    images = sorted((data / "imagesTr").glob("*.nii.gz"))
    preds = sorted((root / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == len(images) == 3
    source, pred = nib.load(images[0]), nib.load(preds[0])
    assert nib.aff2axcodes(source.affine) != ("R", "A", "S"), "the input must really be non-RAS"
    assert not np.allclose(source.header.get_zooms()[:3], source.header.get_zooms()[0]), "and anisotropic"
    assert pred.shape[:3] == source.shape[:3]
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}

    # evaluate (overlay on train.json + the same data overlay) reads the student back and writes NIfTI masks
    configs = ["train.json", "evaluate.json", OVERLAY]
    run_bundle("evaluating", configs, root, {**TINY_3D, "dataset_dir": data}, tiny=False)
    assert "val_mean_dice" in (root / "eval" / "metrics.csv").read_text()
    assert len(list((root / "eval" / "evaluate").glob("*_seg.nii.gz"))) == 1


def test_ct3d_overlay_matches_the_synthetic_pipeline_and_reads_a_user_datalist(tmp_path):
    import json

    from monai.bundle import ConfigParser

    from lightvessel_monai.data.synthetic_3d import make_synthetic_ct

    synthetic = json.loads((REPO / "configs" / "data" / "synthetic_3d.json").read_text())
    ct3d = json.loads((REPO / "configs" / "data" / "ct3d.json").read_text())
    shared = ("preprocessing", "train_augmentation", "inferer", "postprocessing", "network_def", "teacher_def")
    for key in shared + ("taps", "fsd_pairs", "asd_weight"):
        assert ct3d[key] == synthetic[key], f"{key} differs between ct3d.json and synthetic_3d.json"

    # a user's MSD-style dataset (here written by the synthetic generator) through the generic overlay
    make_synthetic_ct(tmp_path / "ct", num_train=2, num_val=1, shape=(32, 32, 16))
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle" / "configs" / "train.json"), str(REPO / "configs" / "data" / "ct3d.json")])
    parser["dataset_dir"] = str(tmp_path / "ct")
    parser["bundle_root"] = str(tmp_path / "bundle")
    assert len(parser.get_parsed_content("train#datalist")) == 2
    item = parser.get_parsed_content("preprocessing")(parser.get_parsed_content("validate#datalist")[0])
    image, label = item["image"], item["label"]
    assert image.shape == label.shape and image.shape[0] == 1 and image.ndim == 4
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0  # CT window applied
    rotation = image.affine[:3, :3].numpy()
    np.testing.assert_allclose(np.abs(np.diag(rotation)), [1.2, 1.2, 2.5], atol=0.05)  # resampled
    assert (np.diag(rotation) > 0).all(), "reoriented to RAS"


@pytest.mark.integration
def test_gkd_runs_on_3d_volumes_with_its_act_stage_cached(tmp_path):
    """GKD in 3D through the command line: the ACT stage trains and caches the TAN, the terms are logged, the
    validation reports the Fréchet Semantic Distance; a second run reuses the ACT cache."""
    root = tmp_path / "bundle"
    data = root / "data" / "synthetic_ct_3d"
    gkd = str(REPO / "configs" / "methods" / "gkd.json")
    settings = {
        **TINY_3D,
        "dataset_dir": data,
        "synthetic#num_val": 2,
        "gkd_psae_iterations": 2,
        "gkd_act_iterations": 2,
    }
    log = "".join(run_bundle("training", ["train.json", OVERLAY, gkd], root, settings, tiny=False).stdout)
    proc = run_bundle("training", ["train.json", OVERLAY, gkd], root, {**settings, "resume": False}, tiny=False)
    log, again = log + proc.stderr, proc.stdout + proc.stderr
    for term in ("loss_gkd_intra", "loss_gkd_inter", "loss_gkd_cross", "loss_gkd_align", "val_semantic_distance"):
        assert term in again, f"{term} is not logged in 3D"
    caches = list((root / "models" / "teacher").glob("act_*.pt"))
    assert len(caches) == 1
    assert "reusing the cached ACT headers" in again
    state = torch.load(caches[0], weights_only=True)
    assert any(k.startswith("teacher_header.") for k in state) and any(
        k.startswith("label_autoencoder.") for k in state
    )
