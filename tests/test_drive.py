"""DRIVE: the datalist split, the fundus transforms (synthetic arrays and real images) and the drive.json overlay.

Tests that read the real images skip when ``../shared/data/DRIVE`` is absent; the others build their own tiny data.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from lightvessel_monai.data.checks import check_datalist
from lightvessel_monai.data.datasets import DRIVE_VALIDATION_NUMBERS, drive_datalist
from lightvessel_monai.data.transforms import (
    FundusFOVd,
    FundusToVesselImaged,
    MaskOutsided,
    fundus_to_vessel_image,
    mask_outside,
)
from lightvessel_monai.errors import DataError

from conftest import REPO, SHARED_DATA, config_parser, leading_number

DRIVE = SHARED_DATA / "DRIVE"
CONFIGS = REPO / "bundle" / "configs"
OVERLAY = str(REPO / "configs" / "data" / "drive.json")


def _require_drive() -> None:
    if not DRIVE.is_dir():
        pytest.skip(f"DRIVE not found at {DRIVE} (../shared is absent)")


def _fake_drive(root: Path, numbers=range(21, 41)) -> Path:
    """Empty files with DRIVE's layout (the datalist only lists files)."""
    for sub in ("images", "1st_manual", "mask"):
        (root / "training" / sub).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        (root / "training" / "images" / f"{n}_training.tif").touch()
        (root / "training" / "1st_manual" / f"{n}_manual1.gif").touch()
        (root / "training" / "mask" / f"{n}_training_mask.gif").touch()
    return root


# ---------------------------------------------------------------------------------------------------- datalist


def _check_split(datalist: dict) -> None:
    train, val = datalist["training"], datalist["validation"]
    assert len(train) == 15 and len(val) == 5
    assert [leading_number(e["image"]) for e in train] == list(range(21, 36))
    assert [leading_number(e["image"]) for e in val] == list(DRIVE_VALIDATION_NUMBERS) == list(range(36, 41))
    assert not {e["image"] for e in train} & {e["image"] for e in val}
    for entry in train + val:
        assert sorted(entry) == ["fov", "image", "label"]
        n = leading_number(entry["image"])
        assert leading_number(entry["label"]) == n and leading_number(entry["fov"]) == n, entry
        assert Path(entry["label"]).parent.name == "1st_manual" and Path(entry["fov"]).parent.name == "mask"


def test_drive_datalist_split_on_the_layout(tmp_path):
    _check_split(drive_datalist(_fake_drive(tmp_path)))
    custom = drive_datalist(tmp_path, validation_numbers=[21, 22])
    assert [leading_number(e["image"]) for e in custom["validation"]] == [21, 22] and len(custom["training"]) == 18


def test_drive_datalist_split_on_the_real_data():
    _require_drive()
    datalist = drive_datalist(DRIVE)
    _check_split(datalist)
    assert all(Path(p).is_file() for e in datalist["training"] + datalist["validation"] for p in e.values())


def test_drive_missing_data_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"DRIVE training images not found at .*nowhere") as info:
        drive_datalist(tmp_path / "nowhere")
    assert "\n" not in str(info.value)
    root = _fake_drive(tmp_path / "drive")
    (root / "training" / "mask" / "30_training_mask.gif").unlink()
    with pytest.raises(DataError, match=r"field-of-view mask of 30_training.tif not found: .*30_training_mask.gif"):
        drive_datalist(root)
    (root / "training" / "images" / "40_training.tif").unlink()
    with pytest.raises(DataError, match="validation image 40_training.tif not found"):
        drive_datalist(root)
    with pytest.raises(DataError, match="none is left for training"):
        drive_datalist(_fake_drive(tmp_path / "small", [36, 37]), validation_numbers=[36, 37])


def test_check_datalist_checks_the_fov_key(tmp_path):
    def png(name, shape):
        path = tmp_path / name
        Image.fromarray(np.zeros(shape, np.uint8)).save(path)
        return str(path)

    good = {"image": png("i.png", (8, 9)), "label": png("l.gif", (8, 9)), "fov": png("f.gif", (8, 9))}
    pil = {"reader": "PILReader"}  # DRIVE's masks are GIFs, which ITK (MONAI's choice for .gif) cannot read
    assert check_datalist([good], label_values=[0, 255], **pil) == [good]
    bad = {**good, "fov": png("f2.gif", (8, 10))}
    with pytest.raises(DataError, match=r"entry 0: fov .*f2.gif has spatial shape \(8, 10\)"):
        check_datalist([bad], label_values=[0, 255], **pil)
    with pytest.raises(DataError, match="fov .* does not exist"):
        check_datalist([{**good, "fov": str(tmp_path / "none.gif")}], **pil)
    # entries without the optional key, and other extra keys, are as before
    assert check_datalist([{"image": good["image"], "label": good["label"], "note": "x"}], **pil)
    # left to choose, MONAI reads .gif with ITK, which cannot: pre-flight says so instead of the first epoch
    with pytest.raises(DataError, match=r"l.gif cannot be read by ITK, .* set image_reader to PILReader"):
        check_datalist([good], label_values=[0, 255])


# -------------------------------------------------------------------------------------------------- transforms


def _naive_vessel_image(image: np.ndarray, fov: np.ndarray, channel: int, invert: bool) -> np.ndarray:
    """The hand computation: 255 - channel (if invert), standardised with the FOV pixels' mean and std."""
    x = image[channel].astype(np.float64)
    x = 255.0 - x if invert else x
    inside = fov > 0
    z = (x - x[inside].mean()) / x[inside].std()
    return np.where(inside, z, 0.0)[None]


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize("invert", [True, False])
def test_fundus_transform_matches_the_hand_computation(spatial, invert):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, *spatial)).astype(np.float32)
    fov = (rng.random(spatial) > 0.4).astype(np.float32) * 255  # a {0, 255} mask
    expected = _naive_vessel_image(image, fov, 1, invert)
    out = FundusToVesselImaged("image", "fov", channel=1, invert=invert)(
        {"image": MetaTensor(image, meta={"filename_or_obj": "x.tif"}), "fov": fov[None]}
    )["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.tif"
    assert out.shape == (1, *spatial) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    inside = fov > 0
    assert abs(out.numpy()[0][inside].mean()) < 1e-5 and out.numpy()[0][inside].std() == pytest.approx(1, abs=1e-5)
    # the fov may also come without its channel, as numpy
    np.testing.assert_allclose(fundus_to_vessel_image(image, fov, 1, invert).numpy(), expected, atol=1e-5)


def test_fundus_transform_edge_cases():
    image = np.full((3, 4, 4), 7.0, np.float32)
    fov = np.zeros((1, 4, 4))
    fov[0, 1:3, 1:3] = 1
    out = fundus_to_vessel_image(image, fov)  # constant inside the FOV: centred, not divided by 0
    assert torch.count_nonzero(out) == 0 and torch.isfinite(out).all()
    with pytest.raises(DataError, match=r"field-of-view mask is empty \(e.tif\)"):
        fundus_to_vessel_image(MetaTensor(image, meta={"filename_or_obj": "e.tif"}), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="fov has shape"):
        fundus_to_vessel_image(image, np.ones((4, 5)))
    with pytest.raises(ValueError, match="channel 3 is out of range"):
        fundus_to_vessel_image(image, fov, channel=3)
    with pytest.raises(KeyError, match="no field-of-view key 'fov'"):
        FundusToVesselImaged("image")({"image": image})


def test_fundus_fov_is_estimated_only_when_absent():
    image = np.zeros((3, 4, 5), np.float32)
    image[0, 1:3, 1:4] = 100.0  # red inside the FOV
    image[0, 0, 0] = 20.0  # at the threshold: outside
    estimated = FundusFOVd("image", "fov", channel=0, threshold=20)({"image": image})["fov"]
    assert estimated.shape == (1, 4, 5) and estimated.dtype == torch.float32
    np.testing.assert_array_equal(estimated.numpy()[0], image[0] > 20)
    given = np.ones((1, 4, 5), np.float32)
    assert FundusFOVd("image")({"image": image, "fov": given})["fov"] is given


@pytest.mark.parametrize("spatial", [(3, 4), (3, 4, 2)], ids=["2d", "3d"])
def test_mask_outside_sets_background(spatial):
    rng = np.random.default_rng(1)
    label = rng.random(spatial) > 0.5
    onehot = torch.as_tensor(np.stack([~label, label])).float()
    mask = rng.random(spatial) > 0.5
    d = MaskOutsided(["pred", "image"], "fov", one_hot=[True, False])(
        {"pred": onehot, "image": torch.ones(1, *spatial) * 3, "fov": torch.as_tensor(mask)[None].float()}
    )
    expected = np.stack([np.where(mask, ~label, True), np.where(mask, label, False)]).astype(np.float32)
    np.testing.assert_array_equal(d["pred"].numpy(), expected)
    np.testing.assert_array_equal(d["image"].numpy()[0], np.where(mask, 3.0, 0.0))
    with pytest.raises(ValueError, match="at least 2 channels"):
        mask_outside(torch.ones(1, *spatial), mask)


# -------------------------------------------------------------------------------------------- on DRIVE images


@pytest.fixture(scope="module")
def drive_item(tmp_path_factory):
    """The overlay's preprocessing of image 21 (train.json + drive.json)."""
    _require_drive()
    parser = config_parser(CONFIGS / "train.json", OVERLAY, bundle_root=str(tmp_path_factory.mktemp("bundle")))
    entry = drive_datalist(DRIVE)["training"][0]
    return parser, entry, parser.get_parsed_content("preprocessing")(entry)


def test_drive_preprocessing_on_a_real_image(drive_item):
    _, entry, item = drive_item
    image, label, fov = item["image"].numpy()[0], item["label"].numpy()[0], item["fov"].numpy()[0]
    # MONAI's PILReader gives (W, H): 565 x 584
    assert image.shape == label.shape == fov.shape == (565, 584)
    assert set(np.unique(label)) == {0.0, 1.0} and set(np.unique(fov)) == {0.0, 1.0}
    inside, vessel = fov > 0, label > 0
    assert abs(image[inside].mean()) < 1e-4 and image[inside].std() == pytest.approx(1.0, abs=1e-4)
    assert np.all(image[~inside] == 0)
    assert image[vessel & inside].mean() > image[~vessel & inside].mean() + 0.3  # vessels bright after inversion
    green = np.asarray(Image.open(entry["image"]))[..., 1].T  # PIL (H, W) -> MONAI (W, H)
    np.testing.assert_allclose(image, _naive_vessel_image(green[None], fov, 0, True)[0], atol=1e-4)


def test_drive_training_crops_keep_the_fov(drive_item):
    parser, entry, _ = drive_item
    crops = parser.get_parsed_content("train#preprocessing")(entry)
    assert len(crops) == parser["samples_per_image"]
    for crop in crops:
        assert crop["image"].shape == crop["label"].shape == crop["fov"].shape == (1, 96, 96)
        assert crop["fov"].sum() > 0  # centred inside the FOV
        assert torch.all(crop["image"][crop["fov"] == 0] == 0)


def test_drive_overlay_datalist_and_validation_postprocessing(drive_item, tmp_path):
    parser, _, _ = drive_item
    parser["dataset_dir"] = str(tmp_path / "drive")
    assert len(parser.get_parsed_content("train#datalist")) == 15  # checks image, label and fov files
    assert len(parser.get_parsed_content("validate#datalist")) == 5
    assert (tmp_path / "drive" / "datalist.json").is_file()
    post = parser.get_parsed_content("validate#postprocessing")
    fov = torch.zeros(1, 6, 5)
    fov[:, 1:5, 1:4] = 1
    out = post({"pred": torch.randn(2, 6, 5), "label": torch.ones(1, 6, 5), "fov": fov})
    assert torch.all(out["label"][1][fov[0] == 0] == 0) and torch.all(out["label"][1][fov[0] == 1] == 1)
    assert torch.all(out["pred"][0][fov[0] == 0] == 1)


def test_validation_postprocessing_is_unmasked_without_eval_mask_key():
    post = config_parser(CONFIGS / "train.json").get_parsed_content("validate#postprocessing")
    assert [type(t).__name__ for t in post.transforms] == ["Activationsd", "AsDiscreted"]


def test_drive_inference_estimates_the_fov(tmp_path):
    _require_drive()
    parser = config_parser(CONFIGS / "inference.json", OVERLAY, bundle_root=str(tmp_path))
    files = parser.get_parsed_content("datalist")
    assert len(files) == 20 and sorted(files[0]) == ["image"]
    item = parser.get_parsed_content("preprocessing")(files[0])
    given = np.asarray(Image.open(DRIVE / "training" / "mask" / "21_training_mask.gif")).T > 0
    assert np.mean((item["fov"].numpy()[0] > 0) != given) < 0.01
    assert abs(float(item["image"][item["fov"] > 0].mean())) < 1e-4


def test_drive_validation_inferer_keeps_the_input_size():
    parser = config_parser(CONFIGS / "train.json", OVERLAY)
    inferer = parser.get_parsed_content("validate#inferer")
    x = torch.randn(1, 1, 565, 584)  # DRIVE's size is not divisible by the UNets' downsampling
    with torch.no_grad():
        for key in ("network", "teacher"):
            assert inferer(x, parser.get_parsed_content(key).eval()).shape == (1, 2, 565, 584), key
