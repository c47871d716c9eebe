"""The bundle on the real data in ``../shared/data``: the TotalSegmentator example CT (3D) and LVSD300 (2.5D).

Every test skips when its data folder is absent. The end-to-end runs use tiny networks and one epoch.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from lightvessel_monai.data.datasets import lvsd300_datalist, totalseg_example_datalist
from lightvessel_monai.errors import DataError

from conftest import REPO, SHARED_DATA
from test_bundle import CONFIGS, run_bundle

TOTALSEG = SHARED_DATA / "TotalSegmentator_example_ct"
LVSD = SHARED_DATA / "LVSD300_liver_vessel_slices"
TOTALSEG_OVERLAY = str(REPO / "configs" / "data" / "totalseg_example.json")
LVSD_OVERLAY = str(REPO / "configs" / "data" / "lvsd300.json")
VESSELS = [52, 63, 64]  # aorta, inferior_vena_cava, portal_vein_and_splenic_vein (TotalSegmentator v2 'total')

TINY_NETS = {
    "network_def#features": "[4,4,8,8,16,4]",
    "teacher_def#features": "[8,8,16,16,32,8]",
}
TINY_RUN = {
    "max_epochs": 1,
    "teacher_train#settings#max_epochs": 1,
    "val_interval": 1,
    "asd_warmup": 0,
    "latency_repeats": 1,
    "progress_bar": "False",
    **TINY_NETS,
}
# lvsd300.json uses MONAI UNets: its student (4-8-16-32) is already tiny, the teacher is shrunk
TINY_RUN_LVSD = {**{k: v for k, v in TINY_RUN.items() if k not in TINY_NETS}, "teacher_def#channels": "[8,8,16,16,32]"}


def _require(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"{path.name} not found at {path} (../shared is absent)")


def _parser(*configs: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(list(configs))
    for key, value in overrides.items():
        parser[key] = value
    return parser


# ------------------------------------------------------------------------------------------- TotalSegmentator


def test_totalseg_datalist_splits_the_volume_along_z(tmp_path):
    _require(TOTALSEG)
    same = totalseg_example_datalist(TOTALSEG)
    assert same["training"] == same["validation"] and len(same["training"]) == 1
    split = totalseg_example_datalist(TOTALSEG, split_dir=tmp_path)
    source = nib.load(TOTALSEG / "example_seg.nii.gz")
    seg = np.asarray(source.dataobj)
    (train,), (val,) = split["training"], split["validation"]
    halves = {k: nib.load(e["label"]) for k, e in (("train", train), ("val", val))}
    assert halves["train"].shape[2] + halves["val"].shape[2] == seg.shape[2]
    np.testing.assert_array_equal(np.asarray(halves["val"].dataobj), seg[:, :, :15])
    np.testing.assert_array_equal(np.asarray(halves["train"].dataobj), seg[:, :, 15:])
    # each half keeps its place in world space
    np.testing.assert_allclose(halves["train"].affine, source.slicer[:, :, 15:].affine)
    np.testing.assert_allclose(nib.load(train["image"]).affine, halves["train"].affine)
    for half in halves.values():
        assert np.isin(np.asarray(half.dataobj), VESSELS).sum() > 0


def test_totalseg_missing_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match="TotalSegmentator example not found at"):
        totalseg_example_datalist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="LVSD300 liver-vessel slices not found at"):
        lvsd300_datalist(tmp_path / "nowhere")


@pytest.mark.parametrize("target", [VESSELS, [5]], ids=["vessels", "liver"])
def test_totalseg_label_chain_is_the_binary_target(tmp_path, target):
    _require(TOTALSEG)
    parser = _parser(str(CONFIGS / "train.json"), TOTALSEG_OVERLAY, dataset_dir=str(tmp_path), target_labels=target)
    preprocessing = parser.get_parsed_content("preprocessing")
    item = preprocessing(
        {"image": str(TOTALSEG / "example_ct_sm.nii.gz"), "label": str(TOTALSEG / "example_seg.nii.gz")}
    )
    label = item["label"].numpy()
    assert label.shape == item["image"].shape and label.shape[0] == 1
    assert set(np.unique(label)) == {0.0, 1.0}
    seg = nib.load(TOTALSEG / "example_seg.nii.gz")
    # the file is already RAS at 3 mm, so orientation and spacing keep every voxel: the counts must agree
    assert nib.aff2axcodes(seg.affine) == ("R", "A", "S")
    assert int(label.sum()) == int(np.isin(np.asarray(seg.dataobj), target).sum())


@pytest.mark.integration
def test_totalseg_training_and_inference_in_the_ct_space(tmp_path):
    _require(TOTALSEG)
    root = tmp_path / "bundle"
    data = root / "data" / "totalseg_example"
    extra = {**TINY_RUN, "dataset_dir": data, "patch_size": "[64,64,32]", "image_size": "[64,64,32]"}
    extra.update({"samples_per_image": 2, "batch_size": 2, "sw_overlap": 0, "sw_batch_size": 4})
    proc = run_bundle("training", ["train.json", TOTALSEG_OVERLAY], root, extra, tiny=False)
    log = proc.stdout + proc.stderr
    for term in ("loss_seg", "loss_fsd", "loss_asd", "loss_disc"):
        assert term in log, f"{term} is not logged"
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert any(v.ndim == 5 for v in state.values()), "the student is a 3D network"

    ct = TOTALSEG / "example_ct_sm.nii.gz"
    overrides = {"patch_size": "[64,64,32]", "sw_overlap": 0, "network_def#features": TINY_NETS["network_def#features"]}
    run_bundle("run", ["inference.json", TOTALSEG_OVERLAY], root, overrides, tiny=False)
    preds = sorted((root / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert [p.name for p in preds] == ["example_ct_sm_seg.nii.gz"]
    source, pred = nib.load(ct), nib.load(preds[0])
    assert pred.shape[:3] == source.shape[:3]
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


# ------------------------------------------------------------------------------------------------------ LVSD300


def test_lvsd300_datalist_uses_the_given_split():
    _require(LVSD)
    datalist = lvsd300_datalist(LVSD)
    train, val = datalist["training"], datalist["validation"]
    assert len(train) == 20 and len(val) == 10
    assert all(e["image"] == e["label"] for e in train + val)
    studies = {key: {Path(e["image"]).name[:17] for e in entries} for key, entries in datalist.items()}
    assert not studies["training"] & studies["validation"], "a study is in both splits"


def test_lvsd300_preprocessing_splits_slices_and_mask(tmp_path):
    _require(LVSD)
    parser = _parser(str(CONFIGS / "train.json"), LVSD_OVERLAY, dataset_dir=str(tmp_path))
    preprocessing = parser.get_parsed_content("preprocessing")
    path = lvsd300_datalist(LVSD)["training"][0]["image"]
    item = preprocessing({"image": path, "label": path})
    assert sorted(item) == ["image", "label", "liver"]
    raw = np.asarray(nib.load(path).dataobj)
    image, label = item["image"].numpy(), item["label"].numpy()
    assert image.shape == (7, 512, 512) and label.shape == (1, 512, 512)
    assert set(np.unique(label)) == {0.0, 1.0}
    np.testing.assert_array_equal(label[0], raw[..., 0] > 0)
    # standardised by the liver's voxels (> 0 in the liver-masked slices), the outside shifted with them
    slices = np.moveaxis(raw[..., 1:], -1, 0).astype(np.float64) / 255.0
    inside = slices[slices > 0]
    expected = (slices - inside.mean()) / inside.std(ddof=1)
    np.testing.assert_allclose(image, expected, atol=1e-4)
    np.testing.assert_array_equal(item["liver"].numpy()[0], (raw[..., 1:] > 0).any(-1))


@pytest.mark.integration
def test_lvsd300_training_end_to_end(tmp_path):
    _require(LVSD)
    root = tmp_path / "bundle"
    extra = {**TINY_RUN_LVSD, "dataset_dir": root / "data" / "lvsd300", "patch_size": "[64,64]"}
    extra["image_size"] = "[512,512]"
    extra.update({"samples_per_image": 2, "batch_size": 8, "num_train": 8, "num_val": 2})
    proc = run_bundle("training", ["train.json", LVSD_OVERLAY], root, extra, tiny=False)
    log = proc.stdout + proc.stderr
    for term in ("loss_seg", "loss_fsd", "loss_asd", "loss_disc"):
        assert term in log, f"{term} is not logged"
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    parser = _parser(str(CONFIGS / "train.json"), LVSD_OVERLAY)
    student = parser.get_parsed_content("network_def")
    student.load_state_dict(state)
    first = next(v for v in state.values() if v.ndim == 4)
    assert first.shape[1] == 7, "the student takes the 7 slices as input channels"
    report = (root / "eval" / "report.csv").read_text().splitlines()
    assert report[0].startswith("model,dice") and len(report) == 3

    # inference writes one 512x512 {0, 1} NIfTI mask, in the input's voxel frame, per file (.82 and .90 of vali/)
    inputs = sorted((LVSD / "vali").glob("*.[89]?.nii.gz"))
    overrides = {
        "input_glob": LVSD / "vali" / "*.[89]?.nii.gz",
    }
    run_bundle("run", ["inference.json", LVSD_OVERLAY], root, overrides, tiny=False)
    preds = sorted((root / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert [p.name.replace("_seg", "") for p in preds] == [p.name for p in inputs] and len(preds) == 2
    pred, source = nib.load(preds[0]), nib.load(inputs[0])
    assert pred.shape[:2] == (512, 512) and np.prod(pred.shape) == 512 * 512  # (512, 512, 1, 1): x, y, z, channel
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)
