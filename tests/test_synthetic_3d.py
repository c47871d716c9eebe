"""Tests of the synthetic CT volume generator (lightvessel_monai.data.synthetic_3d)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lightvessel_monai.data import synthetic_3d
from lightvessel_monai.data.synthetic_3d import ct_affine, generate_ct_volume, make_synthetic_ct

SMALL = (48, 48, 24)
SPACING = (0.8, 0.8, 2.5)


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    return [synthetic_3d._phantom(seed, synthetic_3d.DEFAULT_SHAPE, SPACING) for seed in range(3)]


def test_same_seed_identical_different_seed_differs():
    img_a, mask_a = generate_ct_volume(3, shape=SMALL)
    np.random.seed(1)  # no global RNG state is used
    img_b, mask_b = generate_ct_volume(3, shape=SMALL)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    img_c, mask_c = generate_ct_volume(4, shape=SMALL)
    assert not np.array_equal(img_a, img_c)
    assert not np.array_equal(mask_a, mask_c)


def test_default_volume_dtype_and_shape():
    image, mask = generate_ct_volume(1)
    assert image.shape == mask.shape == (96, 96, 48)
    assert image.dtype == np.float32 and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}


def test_hounsfield_ranges(phantoms):
    for image, mask, parts in phantoms:
        fg = mask > 0
        air = ~ndimage.binary_dilation(parts["body"], iterations=3)
        assert abs(np.median(image[air]) + 1000) < 10
        assert 8 <= image[air].std() <= 25  # Gaussian noise of 10-20 HU
        liver = parts["liver"] & ~ndimage.binary_dilation(fg, iterations=2)
        assert 40 <= np.median(image[liver]) <= 70
        assert 150 <= np.median(image[fg]) <= 250
        assert 400 <= np.percentile(image[parts["spine"]], 75) <= 750  # bone
        body_soft = parts["body"] & ~parts["liver"] & ~parts["spine"] & (image < 100)
        assert -120 <= np.median(image[body_soft]) <= 60
        assert (image[parts["body"]] < -60).mean() > 0.05  # fat rim and patches


def test_vessel_tree_shape(phantoms):
    for image, mask, parts in phantoms:
        fg = mask > 0
        assert 0.002 <= fg.mean() <= 0.05
        labels, _ = ndimage.label(fg, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes.max() / sizes.sum() >= 0.95  # one connected tree
        assert fg[parts["liver"]].sum() == fg.sum()  # vessels lie inside the liver ...
        assert fg[parts["liver"]].mean() < 0.2  # ... and fill only part of it
        # a tree of tubes, not a blob: an in-plane erosion by more than the trunk radius removes nearly everything
        eroded = ndimage.binary_erosion(fg, structure=np.ones((11, 11, 1)))
        assert eroded.sum() < 0.02 * fg.sum()
        # it tapers: thick trunk voxels and many thin (one-voxel radius) branch voxels
        depth = ndimage.distance_transform_edt(fg, sampling=(1, 1, 100))  # in-plane depth only
        assert depth.max() >= 3 and (depth[fg] <= 1.5).mean() > 0.5
        # vessels are bright against the liver that surrounds them
        ring = ndimage.binary_dilation(fg, iterations=2) & ~ndimage.binary_dilation(fg) & parts["liver"]
        assert np.median(image[fg]) > np.median(image[ring]) + 50


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*.nii.gz"))}


def test_make_synthetic_ct_files_affine_and_cache(tmp_path, caplog):
    out = tmp_path / "ct"
    path = make_synthetic_ct(out, num_train=2, num_val=1, shape=SMALL, spacing=SPACING, seed=5)
    assert Path(path) == out / "dataset.json"
    data = json.loads(Path(path).read_text())
    assert len(data["training"]) == 2 and len(data["validation"]) == 1
    assert data["labels"] == {"0": "background", "1": "vessel"} and data["modality"] == {"0": "CT"}
    assert data["generator"] == {
        "seed": 5,
        "shape": list(SMALL),
        "spacing": list(SPACING),
        "num_train": 2,
        "num_val": 1,
        "version": synthetic_3d.GENERATOR_VERSION,
    }
    assert [e["image"] for e in data["training"]] == ["imagesTr/ct_0000.nii.gz", "imagesTr/ct_0001.nii.gz"]
    assert data["validation"] == [{"image": "imagesTr/ct_0002.nii.gz", "label": "labelsTr/ct_0002.nii.gz"}]

    for i, item in enumerate(data["training"] + data["validation"]):
        img, lbl = nib.load(out / item["image"]), nib.load(out / item["label"])
        assert img.shape == lbl.shape == SMALL
        np.testing.assert_array_equal(img.affine, lbl.affine)
        np.testing.assert_allclose(img.affine, ct_affine(SMALL, SPACING), atol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S") != ("R", "A", "S")
        assert not np.allclose(img.affine[:3, 3], 0) and not np.allclose(img.affine[:3, :3], np.diag(SPACING))
        np.testing.assert_allclose(img.header.get_zooms()[:3], SPACING, rtol=1e-6)
        assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        assert lbl.get_data_dtype() == np.uint8
        # the stored arrays are the generated volume (HU rounded to int16) in the same index order
        image, mask = generate_ct_volume(int(np.random.SeedSequence([5, i]).generate_state(1, np.uint64)[0]), SMALL)
        np.testing.assert_array_equal(np.asanyarray(lbl.dataobj), mask)
        expected = np.clip(np.rint(image), -1024, 3071).astype(np.int16)  # CT convention: air floor at -1024
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)

    before, json_mtime = _mtimes(out), Path(path).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger=synthetic_3d.__name__):
        assert make_synthetic_ct(out, num_train=2, num_val=1, shape=SMALL, spacing=SPACING, seed=5) == path
    assert "reusing synthetic CT volumes" in caplog.text
    assert _mtimes(out) == before and Path(path).stat().st_mtime_ns == json_mtime

    # changed parameters regenerate; leftovers of the larger dataset are removed
    make_synthetic_ct(out, num_train=1, num_val=1, shape=SMALL, spacing=(1.0, 1.0, 2.0), seed=5)
    data2 = json.loads(Path(path).read_text())
    assert data2["generator"]["spacing"] == [1.0, 1.0, 2.0] and len(data2["training"]) == 1
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ct_0000.nii.gz", "ct_0001.nii.gz"]
    img = nib.load(out / "imagesTr/ct_0000.nii.gz")
    np.testing.assert_allclose(img.header.get_zooms()[:3], (1.0, 1.0, 2.0), rtol=1e-6)
    assert _mtimes(out)["imagesTr/ct_0000.nii.gz"] != before["imagesTr/ct_0000.nii.gz"]
    assert not list(out.glob(".dataset.*"))


def test_monai_pipeline_reorients_to_ras(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    path = make_synthetic_ct(tmp_path, num_train=1, num_val=0, shape=SMALL, spacing=SPACING, seed=0)
    item = load_decathlon_datalist(path, data_list_key="training")[0]
    assert os.path.isabs(item["image"]) and os.path.isfile(item["label"])
    source = np.asanyarray(nib.load(item["label"]).dataobj)

    keys = ["image", "label"]
    loaded = Compose([LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)])(item)
    oriented = Orientationd(keys=keys, axcodes="RAS")(dict(loaded))
    # L->R and P->A: the first two array axes are reversed, the slice axis is kept
    np.testing.assert_array_equal(np.asarray(oriented["label"][0]), source[::-1, ::-1, :])
    np.testing.assert_array_equal(np.asarray(oriented["image"][0]), np.asarray(loaded["image"][0])[::-1, ::-1, :])
    assert nib.aff2axcodes(np.asarray(oriented["label"].affine)) == ("R", "A", "S")

    spaced = Spacingd(keys=keys, pixdim=(1.6, 1.6, 2.5), mode=("bilinear", "nearest"))(oriented)
    assert spaced["image"].shape == spaced["label"].shape
    assert all(abs(n - 24) <= 1 for n in spaced["image"].shape[1:])  # 48 x 0.8 mm -> 1.6 mm, 24 x 2.5 mm kept
    lbl = np.asarray(spaced["label"])
    assert set(np.unique(lbl).tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(np.linalg.norm(np.asarray(spaced["label"].affine)[:3, :3], axis=0), (1.6, 1.6, 2.5))


def test_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightvessel_monai.data.synthetic_3d", "--output_dir", str(tmp_path / "d")]
        + ["--num_train", "1", "--num_val", "1", "--shape", "32", "32", "16", "--spacing", "1", "1", "3"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "d" / "dataset.json")
    data = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert data["generator"]["shape"] == [32, 32, 16] and data["generator"]["spacing"] == [1.0, 1.0, 3.0]
    assert nib.load(tmp_path / "d" / data["validation"][0]["label"]).shape == (32, 32, 16)
