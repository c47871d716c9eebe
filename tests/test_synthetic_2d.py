"""Tests of the synthetic coronary angiogram generator (lightvessel_monai.data.synthetic_2d)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lightvessel_monai.data import synthetic_2d
from lightvessel_monai.data.synthetic_2d import generate_angiogram, make_synthetic_angiograms, save_overlay_png


@pytest.fixture(scope="module")
def samples_512() -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_angiogram(seed, size=512) for seed in range(4)]


def test_same_seed_identical_different_seed_differs():
    img_a, mask_a = generate_angiogram(7, size=256)
    img_b, mask_b = generate_angiogram(7, size=256)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    img_c, mask_c = generate_angiogram(8, size=256)
    assert not np.array_equal(img_a, img_c)
    assert not np.array_equal(mask_a, mask_c)


def test_no_global_rng_state_used():
    np.random.seed(1)
    first = generate_angiogram(3, size=128)
    np.random.seed(2)
    np.random.random(10)
    second = generate_angiogram(3, size=128)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize("size", [128, 256, 512])
def test_dtype_shape_values_and_vessel_fraction(size):
    for seed in range(3):
        image, mask = generate_angiogram(seed, size=size)
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert image.shape == (size, size) and mask.shape == (size, size)
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert 0.025 <= (mask > 0).mean() <= 0.13
        assert image.std() > 10  # textured, not constant
        # vessels are dark: the labelled pixels are darker than the rest on average
        assert image[mask > 0].mean() < image[mask == 0].mean() - 15


def test_thick_vessels_darker_than_thin_ones(samples_512):
    for image, mask in samples_512:
        fg = mask > 0
        depth = ndimage.distance_transform_edt(fg)
        thick = depth >= 4  # centres of vessels with radius >= ~4 px
        # pixels of thin vessels: no pixel within 2 px lies deeper than 1.5 px inside the mask
        thin = fg & (ndimage.maximum_filter(depth, size=5) <= 1.5)
        # local background: a ring around the thin vessels that avoids all vessels
        ring = ndimage.binary_dilation(thin, iterations=5) & ~ndimage.binary_dilation(fg, iterations=2)
        assert thick.sum() > 50 and thin.sum() > 200
        img = image.astype(np.float64)
        assert img[thick].mean() < img[thin].mean() - 20
        assert img[thin].mean() < img[ring].mean() - 5
        assert img[thick].mean() < img[~fg].mean() - 40


def test_mask_is_a_connected_tree(samples_512):
    for _, mask in samples_512:
        labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        assert n >= 1
        # the main tree and the second tree that crosses it form one component holding (nearly) all vessel pixels
        assert sizes.max() / sizes.sum() >= 0.9
        # a tree of tubes, not a blob: hardly anything survives an erosion wider than the thickest vessel
        assert ndimage.binary_erosion(mask > 0, iterations=8).sum() < 0.01 * sizes.sum()


def test_second_tree_crosses_main_tree():
    crossing = 0
    for seed in range(10):
        trees, _, _ = synthetic_2d._layout(np.random.default_rng(seed), 256)
        assert len(trees) == 2
        inside = [synthetic_2d._stamp_max((256, 256), tree) > 0 for tree in trees]
        crossing += bool((inside[0] & inside[1]).any())
    assert crossing >= 7  # before the retry in generate_angiogram, which also asks for a crossing


def test_catheter_is_visible_but_not_labelled(monkeypatch):
    with_catheter = [generate_angiogram(seed, size=256) for seed in range(3)]
    real = synthetic_2d._catheter

    def moved_away(*args, **kwargs):  # same random draws, tube placed outside the image
        tube = real(*args, **kwargs)
        tube.xy = tube.xy + 1e5
        return tube

    monkeypatch.setattr(synthetic_2d, "_catheter", moved_away)
    for seed, (image, mask) in enumerate(with_catheter):
        image_nc, mask_nc = generate_angiogram(seed, size=256)
        np.testing.assert_array_equal(mask, mask_nc)  # the catheter never enters the label
        darker = image.astype(int) < image_nc.astype(int) - 20
        assert darker.sum() > 100  # a visible dark tube
        assert darker[mask == 0].sum() > 0.8 * darker.sum()  # lying mostly outside the vessels


def test_save_overlay_png(tmp_path):
    image, mask = generate_angiogram(0, size=128)
    path = save_overlay_png(image, mask, tmp_path / "sub" / "overlay.png")
    rgb = np.asarray(Image.open(path))
    assert rgb.shape == (128, 128, 3)
    red = (rgb[..., 0].astype(int) - rgb[..., 1]) > 60
    assert red[mask > 0].mean() > 0.9 and red[mask == 0].mean() < 0.01
    wide = np.asarray(Image.open(save_overlay_png(image, mask, tmp_path / "wide.png", side_by_side=True)))
    assert wide.shape[0] == 128 and wide.shape[1] > 256
    np.testing.assert_array_equal(wide[:, :128, 1], image)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*.png"))}


def test_make_dataset_cache_and_regeneration(tmp_path, caplog):
    out = tmp_path / "synth"
    path = make_synthetic_angiograms(out, num_train=3, num_val=2, size=128, seed=5)
    assert Path(path) == out / "dataset.json"
    data = json.loads(Path(path).read_text())
    assert len(data["training"]) == 3 and len(data["validation"]) == 2 and data["numTraining"] == 3
    assert data["labels"] == {"0": "background", "1": "vessel"}
    assert data["generator"] == {
        "seed": 5,
        "size": 128,
        "num_train": 3,
        "num_val": 2,
        "version": synthetic_2d.GENERATOR_VERSION,
    }
    items = data["training"] + data["validation"]
    for item in items:
        for key in ("image", "label"):
            assert not os.path.isabs(item[key])
            arr = np.asarray(Image.open(out / item[key]))
            assert arr.shape == (128, 128) and arr.dtype == np.uint8
    # training and validation images are distinct renders
    imgs = {np.asarray(Image.open(out / item["image"])).tobytes() for item in items}
    assert len(imgs) == len(items)
    # image i is generate_angiogram(seed derived from (seed, i))
    expected, _ = generate_angiogram(int(np.random.SeedSequence([5, 3]).generate_state(1, np.uint64)[0]), 128)
    np.testing.assert_array_equal(np.asarray(Image.open(out / data["validation"][0]["image"])), expected)

    first_image = np.asarray(Image.open(out / "imagesTr/angio_0000.png"))
    before = _mtimes(out)
    json_mtime = Path(path).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger=synthetic_2d.__name__):
        assert make_synthetic_angiograms(out, num_train=3, num_val=2, size=128, seed=5) == path
    assert "reusing synthetic angiograms" in caplog.text
    assert _mtimes(out) == before and Path(path).stat().st_mtime_ns == json_mtime

    # a missing file invalidates the cache
    (out / data["training"][1]["label"]).unlink()
    make_synthetic_angiograms(out, num_train=3, num_val=2, size=128, seed=5)
    assert (out / data["training"][1]["label"]).is_file()

    # changed parameters regenerate; leftovers of the larger dataset are removed
    make_synthetic_angiograms(out, num_train=2, num_val=1, size=128, seed=6)
    data2 = json.loads(Path(path).read_text())
    assert data2["generator"]["seed"] == 6 and len(data2["training"]) == 2 and len(data2["validation"]) == 1
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"angio_{i:04d}.png" for i in range(3)]
    assert not np.array_equal(np.asarray(Image.open(out / "imagesTr/angio_0000.png")), first_image)
    assert not list(out.glob(".dataset.*"))  # no temp files left behind


def test_interrupted_generation_is_not_a_valid_cache(tmp_path, monkeypatch):
    out = tmp_path / "synth"
    make_synthetic_angiograms(out, num_train=2, num_val=1, size=64, seed=0)
    calls = {"n": 0}
    real = synthetic_2d.generate_angiogram

    def dying(seed: int, size: int = 512, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(seed, size, **kwargs)

    monkeypatch.setattr(synthetic_2d, "generate_angiogram", dying)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_angiograms(out, num_train=2, num_val=1, size=64, seed=1)
    # the old datalist was invalidated before any file was overwritten, and no new one was written
    assert not (out / "dataset.json").exists()
    monkeypatch.setattr(synthetic_2d, "generate_angiogram", real)
    path = make_synthetic_angiograms(out, num_train=2, num_val=1, size=64, seed=0)
    assert json.loads(Path(path).read_text())["generator"]["seed"] == 0


def test_datalist_loads_through_monai(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    path = make_synthetic_angiograms(tmp_path, num_train=2, num_val=1, size=96, seed=0)
    train = load_decathlon_datalist(path, data_list_key="training")
    val = load_decathlon_datalist(path, data_list_key="validation")
    assert len(train) == 2 and len(val) == 1
    for item in train + val:
        assert os.path.isabs(item["image"]) and os.path.isfile(item["image"]) and os.path.isfile(item["label"])
    loaded = LoadImaged(keys=["image", "label"], image_only=True)(train[0])
    assert tuple(loaded["image"].shape) == (96, 96) and tuple(loaded["label"].shape) == (96, 96)
    assert set(np.unique(np.asarray(loaded["label"])).tolist()) == {0, 255}


def test_cli_writes_datalist_and_overlay(tmp_path):
    overlay = tmp_path / "fig" / "overlay.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightvessel_monai.data.synthetic_2d",
            "--output_dir",
            str(tmp_path / "d"),
            "--num_train",
            "1",
            "--num_val",
            "1",
            "--size",
            "64",
            "--overlay",
            str(overlay),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "d" / "dataset.json")
    assert np.asarray(Image.open(overlay)).shape[:2] == (64, 2 * 64 + 4)
