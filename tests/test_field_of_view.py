"""The exposed field of an X-ray frame: the mask, the fill outside it, the XCA preprocessing, and the masked output.

Tests that read the real angiograms skip when ``../shared/data`` is absent.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from lightvessel_monai.data.field_of_view import FillOutsided, XrayFieldOfViewd, fill_outside, xray_field_of_view
from lightvessel_monai.data.transforms import MaskOutsided
from lightvessel_monai.errors import DataError

from conftest import REPO, SHARED_DATA, config_parser

XCA = SHARED_DATA / "XCA_coronary_vessels"
CONFIGS = REPO / "bundle" / "configs"
OVERLAY = REPO / "configs" / "data" / "xca.json"


def _disc_frame(spatial_dims: int, size: int = 48, radius: float = 18.0, inside=150.0, outside=5.0) -> np.ndarray:
    """A raw frame whose exposed field is a disc (a ball in 3D) centred in the image."""
    grid = np.indices((size,) * spatial_dims) - (size - 1) / 2
    distance = np.sqrt((grid**2).sum(0))
    return np.where(distance <= radius, inside, outside), distance


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_postprocessing_zeroes_outside_the_field_and_inside_the_margin(spatial_dims):
    size, radius = (48, 18.0) if spatial_dims == 2 else (24, 9.0)
    frame, distance = _disc_frame(spatial_dims, size, radius)
    margin = 3
    d = XrayFieldOfViewd("image", threshold=25, opening_radius=2, margin=margin)({"image": torch.tensor(frame)[None]})
    assert d["fov"].shape == (1,) + frame.shape and d["fov"].dtype == torch.float32
    field = d["fov"][0].numpy() > 0
    surround = distance > radius
    # the naive reference: Euclidean distance of every 7th pixel to the nearest surround pixel, by brute force
    surround_points = np.argwhere(surround)
    for index in list(np.ndindex(*frame.shape))[::7]:
        nearest = np.sqrt(((surround_points - np.array(index)) ** 2).sum(1)).min()
        assert field[index] == (nearest > margin), index
    pred = torch.ones((1,) + frame.shape)  # a network that calls every pixel a vessel
    masked = MaskOutsided("pred", mask_key="fov", one_hot=False)({"pred": pred, "fov": d["fov"]})["pred"][0].numpy()
    assert not masked[surround].any()
    assert not masked[(distance > radius - margin + 1) & ~surround].any(), "the margin along the edge is background"
    assert masked[distance < radius - margin - 1].all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dark_structures_inside_the_field_stay_in_it(spatial_dims):
    frame = np.full((40,) * spatial_dims, 150.0)
    frame[(slice(0, 20),) + (slice(18, 21),) * (spatial_dims - 1)] = 5.0  # a 3-px dark vessel leaving at the top
    frame[(slice(24, 30),) * spatial_dims] = 5.0  # a dark blob that does not touch the border
    field, surround = xray_field_of_view(frame, threshold=25, opening_radius=2, margin=4)
    assert field.all() and not surround.any()
    frame[(slice(0, 6),)] = 5.0  # a 6-px dark strip along the border is a surround
    field, surround = xray_field_of_view(frame, threshold=25, opening_radius=2, margin=4)
    assert surround[(slice(0, 6),)].all() and not field[(slice(0, 10),)].any()
    # where the vessel meets the strip the opening keeps a bump of 1-2 px, so the field starts 1-2 px lower there
    assert field[(slice(13, None),)].all()


def test_an_all_dark_frame_is_a_one_line_error():
    with pytest.raises(DataError, match=r"no exposed field in 'image'.*<= 25"):
        XrayFieldOfViewd("image", threshold=25)({"image": torch.zeros(1, 16, 16)})


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", ["smooth", "nearest", "mean", "zero"])
def test_fill_keeps_the_field_and_follows_a_naive_reference(spatial_dims, method):
    rng = np.random.default_rng(0)
    size = 20
    image = rng.normal(size=(2,) + (size,) * spatial_dims)
    mask = np.zeros((1,) + (size,) * spatial_dims)
    mask[(0,) + (slice(4, 14),) * spatial_dims] = 1
    out = fill_outside(torch.tensor(image), torch.tensor(mask), method, sigma=2.0).numpy()
    inside = mask[0] > 0
    np.testing.assert_allclose(out[:, inside], image[:, inside], rtol=1e-6)
    for c in range(2):
        if method == "mean":
            np.testing.assert_allclose(out[c][~inside], image[c][inside].mean(), rtol=1e-5)
        elif method == "zero":
            assert not out[c][~inside].any()
        elif method == "nearest":
            points, values = np.argwhere(inside), image[c][inside]
            for index in list(zip(*np.nonzero(~inside), strict=True))[::11]:
                d2 = ((points - np.array(index)) ** 2).sum(1)
                assert out[c][index] in values[d2 == d2.min()].astype(np.float32)
        else:  # normalised convolution, from its definition with scipy's Gaussian
            num = ndimage.gaussian_filter(np.where(inside, image[c], 0), 2.0, mode="nearest")
            den = ndimage.gaussian_filter(inside.astype(float), 2.0, mode="nearest")
            near = ~inside & (den > 1e-3)
            np.testing.assert_allclose(out[c][near], (num / den)[near], rtol=1e-4, atol=1e-5)
            assert np.isfinite(out[c]).all()


def test_fill_rejects_bad_settings():
    with pytest.raises(ValueError, match="fill method must be one of"):
        fill_outside(torch.zeros(1, 4, 4), torch.ones(1, 4, 4), "reflect")
    with pytest.raises(KeyError, match="no mask key 'fov'"):
        FillOutsided("image")({"image": torch.zeros(1, 4, 4)})


def _xca_preprocessing(overlay=OVERLAY, **overrides):
    return config_parser(CONFIGS / "train.json", overlay, **overrides).get_parsed_content("preprocessing")


def test_a_uniform_field_has_no_step_after_the_xca_preprocessing(tmp_path):
    """A field of uniform grey (150 + noise of sd 10) behind a collimator disc whose edge is blurred (penumbra).

    The bound: the input is standardised over the field, so its noise has sd 1 and the central-difference gradient
    of white noise has sd 1/sqrt(2) per axis; the smooth fill is the local mean of the field, so at the boundary the
    step is one noise value against that mean, of the same size as a step between two field pixels. So the ring's
    largest gradient may not exceed the field interior's largest gradient by more than a quarter. The old recipe
    (threshold mask, 0 outside, no margin) leaves the inverted penumbra as a bright ridge, 4x above that bound.
    """
    rng = np.random.default_rng(1)
    frame, distance = _disc_frame(2, size=128, radius=56.0, inside=150.0, outside=5.0)
    frame = ndimage.gaussian_filter(frame, 1.5) + rng.normal(0, 10, frame.shape) * (distance <= 56.0)
    path = tmp_path / "frame.png"
    Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(path)

    def ring_and_interior(pre):
        d = pre({"image": str(path)})
        x = np.asarray(d["image"][0], dtype=np.float64)
        grad = np.hypot(*np.gradient(x))
        edge = np.abs(distance - 56.0) <= 8  # everything from the penumbra to the fill
        return grad[edge].max(), grad[distance < 40].max()

    ring, interior = ring_and_interior(_xca_preprocessing())
    assert ring <= 1.25 * interior, (ring, interior)
    old = _xca_preprocessing(field_fill="zero", field_margin=0, field_opening_radius=0)
    ring_old, interior_old = ring_and_interior(old)
    assert ring_old > 1.25 * interior_old, "the check must catch the step of the old recipe"


def test_xca_frame_35_field_matches_the_reference():
    """Frame 35: a dark collimator crescent on the right of the picture (19 % of the pixels <= 25).

    Reference, checked by eye on the overlay in docs/images/field_of_view_masks.png: the field is the rounded
    exposed area, 78.6 % of the image with the 6 px margin; the surround (19 %) is the crescent at the right
    border; the centre, the left and the top border are in the field.
    """
    if not XCA.is_dir():
        pytest.skip(f"XCA coronary angiograms not found at {XCA} (../shared is absent)")
    raw = np.asarray(Image.open(XCA / "training" / "35.png"), dtype=np.float64)
    field, surround = xray_field_of_view(raw, threshold=25, opening_radius=4, margin=6)
    assert field.mean() == pytest.approx(0.7861, abs=0.002)
    assert surround.mean() == pytest.approx(0.19, abs=0.01)
    assert field[150, 150] and field[150, 0] and field[0, 150]
    assert surround[150, 299] and not field[150, 290]
    labels = np.asarray(Image.open(XCA / "training" / "35_gt.png")) > 127
    assert not (labels & ~field).any(), "no labelled vessel pixel lies outside the field"
    # the field's edge inside the image is one arc, 6-7.5 px from the surround
    boundary = field & ~ndimage.binary_erosion(field, border_value=1)
    assert ndimage.label(boundary, structure=np.ones((3, 3)))[1] == 1
    gap = ndimage.distance_transform_edt(~surround)[boundary]
    assert gap.min() > 6 and gap.max() < 7.5


@pytest.mark.parametrize("overlay", ["xca", "drive"])
def test_inference_writes_no_vessel_pixel_outside_the_field(tmp_path, overlay):
    """The documented inference command on a frame with a disc field, with a student that calls everything vessel.

    XCA: the exposed field (``XrayFieldOfViewd``, less its 6 px margin); DRIVE: the FOV of a bare fundus image
    (``FundusFOVd``, red channel > 20), as a user's image without a FOV mask file is read.
    """
    frame, distance = _disc_frame(2, size=96, radius=40.0, inside=150.0, outside=5.0)
    frame = np.clip(frame + np.random.default_rng(2).normal(0, 5, frame.shape), 0, 255).astype(np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    data = REPO / "configs" / "data" / f"{overlay}.json"
    if overlay == "xca":
        Image.fromarray(frame).save(inputs / "7.png")
        field, _ = xray_field_of_view(frame, threshold=25, opening_radius=4, margin=6)
        assert not field[distance > 40 - 6 + 1].any()
    else:  # an RGB fundus image: red is the FOV channel, green the vessel channel
        Image.fromarray(np.stack([frame, frame // 2, frame // 4], -1)).save(inputs / "7.png")
        field = frame > 20
    network = config_parser(CONFIGS / "train.json", data).get_parsed_content("network_def")
    state = network.state_dict()
    last_bias = [k for k in state if k.endswith("bias")][-1]
    assert state[last_bias].shape == (2,)
    state[last_bias] = torch.tensor([-1e4, 1e4])  # class 1 wins everywhere
    models = tmp_path / "models"
    models.mkdir()
    torch.save(state, models / "model.pt")
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", f"['{CONFIGS / 'inference.json'}','{data}']",
        "--input_glob", str(inputs / "*.png"), "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "out"),
        "--bundle_root", str(tmp_path / "bundle"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = np.asarray(Image.open(tmp_path / "out" / "predictions" / "7_seg.png"))
    assert mask.shape == frame.shape
    assert 0.3 < field.mean() < 0.9
    assert not mask[~field].any(), "a vessel pixel outside the field"
    assert (mask[field] == 255).all()
