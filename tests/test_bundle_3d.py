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
    "network_def#features": "[4,4,8,8,16,4]",
    "teacher_def#features": "[8,8,16,16,32,8]",
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

    overrides = {"dataset_dir": data, "network_def#features": TINY_3D["network_def#features"]}
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
