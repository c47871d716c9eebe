"""AdaptiveHistogramEqualize(d): CLAHE per channel in 2D and 3D, metadata kept, bad ranges refused."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage.exposure import equalize_adapthist

from lightvessel_monai.data.clahe import AdaptiveHistogramEqualize, AdaptiveHistogramEqualized


def _faint_structure(spatial: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A dim background in [0.40, 0.44] with a faint bright bar at 0.46, plus a bright block elsewhere at 0.9."""
    rng = np.random.default_rng(seed)
    x = 0.40 + 0.04 * rng.random(spatial)
    bar = (slice(None), slice(spatial[1] // 2 - 1, spatial[1] // 2 + 2)) + (slice(None),) * (len(spatial) - 2)
    x[bar] = 0.46
    x[: spatial[0] // 4] = 0.9  # a bright region that a global stretch would spend the range on
    return x


@pytest.mark.parametrize("spatial", [(64, 64), (32, 32, 16)])
def test_each_channel_is_equalised_on_its_own_with_meta_kept(spatial):
    a, b = _faint_structure(spatial, 0), _faint_structure(spatial, 1)[::-1].copy()
    img = MetaTensor(torch.from_numpy(np.stack([a, b])).float(), meta={"filename_or_obj": "frame.png"})
    out = AdaptiveHistogramEqualize(clip_limit=0.02)(img)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "frame.png"
    assert out.shape == img.shape and out.dtype == torch.float32
    for c, ref in enumerate((a, b)):
        expected = equalize_adapthist(ref.astype(np.float32).astype(np.float64), clip_limit=0.02)
        np.testing.assert_allclose(out[c].numpy(), expected, atol=1e-5)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("spatial", [(64, 64), (32, 32, 16)])
def test_faint_structure_gains_contrast(spatial):
    x = _faint_structure(spatial)
    bar = np.zeros(spatial, bool)
    bar[:, spatial[1] // 2 - 1 : spatial[1] // 2 + 2] = True
    bar[: spatial[0] // 4] = False
    near = np.zeros(spatial, bool)
    near[:, spatial[1] // 2 - 6 : spatial[1] // 2 - 2] = True
    near[: spatial[0] // 4] = False
    out = AdaptiveHistogramEqualize(clip_limit=0.05)(torch.from_numpy(x[None]).float())[0].numpy()
    before = x[bar].mean() - x[near].mean()
    after = out[bar].mean() - out[near].mean()
    assert after > 3 * before  # the point of CLAHE: local contrast the bright block would otherwise swamp


def test_dictionary_version_and_bad_input():
    x = torch.from_numpy(_faint_structure((32, 32))[None]).float()
    d = AdaptiveHistogramEqualized(["image", "other"], allow_missing_keys=True)({"image": x, "label": x.clone()})
    torch.testing.assert_close(d["label"], x)  # untouched
    assert not torch.equal(d["image"], x)
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[0, 255\]"):
        AdaptiveHistogramEqualize()(torch.tensor([[[0.0, 255.0], [3.0, 4.0]]]))
    unscaled = MetaTensor(torch.full((1, 4, 4), 200.0), meta={"filename_or_obj": "/data/7.png"})
    with pytest.raises(ValueError, match=r"key 'image': .*got \[200, 200\] \(/data/7.png\)") as info:
        AdaptiveHistogramEqualized("image")({"image": unscaled})
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="channel-first"):
        AdaptiveHistogramEqualize()(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="clip_limit"):
        AdaptiveHistogramEqualize(clip_limit=2.0)
