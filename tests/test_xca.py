"""XCA coronary angiograms: the datalist split, the xca.json overlay on the bundle configs, and a tiny end-to-end run.

Tests that read the real angiograms skip when ``../shared/data/XCA_coronary_vessels`` is absent.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation, gaussian_filter
from skimage.exposure import equalize_adapthist

from lightvessel_monai.data.datasets import XCA_VALIDATION_NUMBERS, xca_datalist
from lightvessel_monai.data.field_of_view import xray_field_of_view
from lightvessel_monai.errors import DataError

from conftest import REPO, SHARED_DATA, config_parser, leading_number
from test_bundle import run_bundle

XCA = SHARED_DATA / "XCA_coronary_vessels"
CONFIGS = REPO / "bundle" / "configs"
OVERLAY = str(REPO / "configs" / "data" / "xca.json")


def _require_xca() -> None:
    if not XCA.is_dir():
        pytest.skip(f"XCA coronary angiograms not found at {XCA} (../shared is absent)")


def _fake_xca(root: Path, numbers=range(1, 41)) -> Path:
    (root / "training").mkdir(parents=True, exist_ok=True)
    for n in numbers:
        (root / "training" / f"{n}.png").touch()
        (root / "training" / f"{n}_gt.png").touch()
    return root


def _check_split(datalist: dict) -> None:
    train, val = datalist["training"], datalist["validation"]
    assert [leading_number(e["image"]) for e in train] == list(range(1, 31))
    assert [leading_number(e["image"]) for e in val] == list(XCA_VALIDATION_NUMBERS) == list(range(31, 41))
    for entry in train + val:
        assert sorted(entry) == ["image", "label"]
        assert Path(entry["label"]).name == f"{leading_number(entry['image'])}_gt.png"


def test_xca_datalist_split_on_the_layout(tmp_path):
    _check_split(xca_datalist(_fake_xca(tmp_path)))
    custom = xca_datalist(tmp_path, validation_numbers=[1, 2, 3])
    assert [leading_number(e["image"]) for e in custom["validation"]] == [1, 2, 3] and len(custom["training"]) == 37


def test_xca_missing_data_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"XCA coronary angiograms not found at .*nowhere") as info:
        xca_datalist(tmp_path / "nowhere")
    assert "\n" not in str(info.value)
    root = _fake_xca(tmp_path / "xca")
    (root / "training" / "7_gt.png").unlink()
    with pytest.raises(DataError, match=r"vessel mask of 7.png not found: .*7_gt.png"):
        xca_datalist(root)
    (root / "training" / "40.png").unlink()
    with pytest.raises(DataError, match="validation angiogram 40.png not found"):
        xca_datalist(root)
    with pytest.raises(DataError, match="none is left for training"):
        xca_datalist(_fake_xca(tmp_path / "small", [31, 32]), validation_numbers=[31, 32])


def test_xca_split_and_preprocessing_on_the_real_data(tmp_path):
    _require_xca()
    _check_split(xca_datalist(XCA))
    parser = config_parser(CONFIGS / "train.json", OVERLAY, bundle_root=str(tmp_path))
    assert len(parser.get_parsed_content("train#datalist")) == 30  # the pre-flight checks read every file
    assert len(parser.get_parsed_content("validate#datalist")) == 10
    entry = xca_datalist(XCA)["training"][0]
    item = parser.get_parsed_content("preprocessing")(entry)
    image, label = item["image"].numpy()[0], item["label"].numpy()[0]
    assert image.shape == label.shape == (300, 300)
    assert set(np.unique(label)) == {0.0, 1.0}
    raw_mask = np.asarray(Image.open(entry["label"])).T  # PIL (H, W) -> MONAI (W, H)
    np.testing.assert_array_equal(label, raw_mask > 127.5)
    # the hand computation: the field (xray_field_of_view), the outside filled by normalised convolution, CLAHE of
    # the [0, 1]-scaled frame, inverted, standardised over the field, the outside filled again; vessels come out bright
    raw = np.asarray(Image.open(entry["image"])).T.astype(np.float64)
    inside, _ = xray_field_of_view(
        raw, parser["collimator_threshold"], parser["field_opening_radius"], parser["field_margin"]
    )
    np.testing.assert_array_equal(item["fov"].numpy()[0] > 0, inside)
    sigma = parser["field_fill_sigma"]

    def smooth_fill(x):
        # normalised convolution; a pixel the Gaussian does not reach (< 0.1 % of its mass on the field) takes the
        # first of sigma, 2 sigma, 4 sigma, ... that does
        out, todo = np.where(inside, x, np.nan), ~inside
        for s in sigma * 2.0 ** np.arange(12):
            if not todo.any():
                break
            den = gaussian_filter(inside.astype(float), s, mode="nearest")
            num = gaussian_filter(np.where(inside, x, 0.0), s, mode="nearest")
            reached = todo & (den > 1e-3)
            out[reached] = num[reached] / den[reached]
            todo &= ~reached
        assert not np.isnan(out).any()
        return out

    filled = smooth_fill(raw)
    scaled = (filled - filled.min()) / (filled.max() - filled.min())
    inverted = -equalize_adapthist(scaled, clip_limit=parser["clahe_clip_limit"])
    expected = smooth_fill((inverted - inverted[inside].mean()) / inverted[inside].std())
    assert not inside.all()
    np.testing.assert_allclose(image, expected, atol=1e-4)
    vessel = label > 0
    ring = binary_dilation(vessel, iterations=4) & ~binary_dilation(vessel, iterations=1)
    assert image[vessel].mean() > image[ring].mean() + 0.3  # brighter than the background right around them
    crops = parser.get_parsed_content("train#preprocessing")(entry)
    assert len(crops) == parser["samples_per_image"]
    assert all(c["image"].shape == c["label"].shape == (1, 96, 96) for c in crops)
    assert all("fov" not in c for c in crops)  # training: the loss sees the filled outside as background


def test_xca_validation_inferer_keeps_the_input_size():
    parser = config_parser(CONFIGS / "train.json", OVERLAY)
    inferer = parser.get_parsed_content("validate#inferer")
    student, teacher = parser.get_parsed_content("network"), parser.get_parsed_content("teacher")
    x = torch.randn(1, 1, 300, 300)  # not divisible by the networks' downsampling
    with torch.no_grad():
        for net in (student.eval(), teacher.eval()):
            assert inferer(x, net).shape == (1, 2, 300, 300)


@pytest.mark.parametrize(
    "method,critic",
    [("lightvessel", "lightvessel#asd#loss#discriminator"), ("skd", "distillation#skd_holistic#loss#discriminator")],
)
def test_real_data_recipes_set_the_critic_of_both_adversarial_methods(method, critic):
    for overlay in (OVERLAY, str(REPO / "configs" / "data" / "drive.json")):
        parser = config_parser(CONFIGS / "train.json", overlay, REPO / "configs" / "methods" / f"{method}.json")
        convs = [m for m in parser.get_parsed_content(critic).modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == parser["critic_channels"] == [8, 16, 32, 64]


def test_xca_overlay_parses_on_inference_and_evaluate(tmp_path):
    _require_xca()
    inference = config_parser(CONFIGS / "inference.json", OVERLAY, bundle_root=str(tmp_path))
    files = inference.get_parsed_content("datalist")
    assert len(files) == 40 and not any("_gt" in f["image"] for f in files)
    assert list(inference.get_parsed_content("inferer").roi_size) == [320, 320]
    evaluate = config_parser(CONFIGS / "train.json", CONFIGS / "evaluate.json", OVERLAY, bundle_root=str(tmp_path))
    names = [type(t).__name__ for t in evaluate.get_parsed_content("validate#postprocessing").transforms]
    # the prediction is background outside the exposed field; the label is not masked: the whole image is scored
    assert names.index("MaskOutsided") < names.index("SaveImaged")
    for parser in (evaluate, config_parser(CONFIGS / "train.json", OVERLAY, bundle_root=str(tmp_path))):
        post = parser.get_parsed_content("validate#postprocessing").transforms
        masks = [t for t in post if type(t).__name__ == "MaskOutsided"]
        assert [list(t.keys) for t in masks] == [["pred"]] and masks[0].mask_key == "fov"


@pytest.mark.integration
def test_xca_end_to_end_trains_infers_and_writes_masks_of_the_input_size(tmp_path):
    _require_xca()
    tiny = {
        "max_epochs": 1,
        "teacher_max_epochs": 1,
        "val_interval": 1,
        "batch_size": 8,
        "samples_per_image": 1,
        "teacher_def#channels": "[4,8,16,32,64]",
        "latency_repeats": 1,
        "progress_bar": "False",
    }
    overlay = ["train.json", OVERLAY]
    run_bundle("training", overlay, tmp_path, extra={**tiny, "dataset_dir": str(tmp_path / "data")}, tiny=False)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "teacher" in (tmp_path / "eval" / "report.csv").read_text()
    for name in ("student", "teacher"):
        assert (tmp_path / "eval" / f"{name}_curve.csv").read_text().startswith("iteration,epoch,metric")
        assert (tmp_path / "eval" / f"{name}_curve.png").stat().st_size > 1000
    images = sorted(str(p) for p in (XCA / "training").glob("3[1-3].png"))
    run_bundle(
        "run",
        ["inference.json", OVERLAY],
        tmp_path,
        extra={"input_glob": str(XCA / "training" / "3[1-3].png")},
        tiny=False,
    )
    for image in images:
        mask = tmp_path / "eval" / "predictions" / f"{Path(image).stem}_seg.png"
        saved = np.asarray(Image.open(mask))
        assert saved.shape == np.asarray(Image.open(image)).shape == (300, 300)
        assert set(np.unique(saved)) <= {0, 255}
