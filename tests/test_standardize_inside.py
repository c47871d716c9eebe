"""StandardizeInsided (issue 28): an organ-masked image standardised by its inside, in 2D and 3D."""

import numpy as np
import pytest
import torch
from monai.transforms import FgBgToIndicesd, RandCropByPosNegLabeld

from lightvessel_monai.data.standardize_inside import StandardizeInsided, standardize_inside
from lightvessel_monai.errors import DataError


def organ_image(spatial_dims: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-channel image that is 0 outside a box 'organ' and positive inside, and a vessel label inside it."""
    g = torch.Generator().manual_seed(seed)
    shape = (24, 20) if spatial_dims == 2 else (16, 14, 12)
    organ = torch.zeros(shape, dtype=torch.bool)
    organ[tuple(slice(3, n - 4) for n in shape)] = True
    image = (torch.rand((3, *shape), generator=g) * 0.4 + 0.2) * organ
    label = torch.zeros((1, *shape))
    label[(0, *(slice(n // 2 - 1, n // 2 + 1) for n in shape))] = 1
    return image, label


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_standardised_by_the_inside_by_hand(spatial_dims):
    image, _ = organ_image(spatial_dims)
    out, mask = standardize_inside(image)
    inside = image[image > 0].double()
    expected = (image.double() - inside.mean()) / inside.std()
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert out[image > 0].mean().abs() < 1e-5 and abs(float(out[image > 0].std()) - 1) < 1e-5
    assert mask.shape == (1, *image.shape[1:]) and torch.equal(mask[0].bool(), (image > 0).any(0))
    assert (out[:, ~mask[0].bool()] < out[image > 0].min()).all()  # the outside stays below the organ


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("factor", [0.5, 1.7])
def test_a_brighter_or_darker_organ_gives_the_same_values(spatial_dims, factor):
    image, _ = organ_image(spatial_dims, seed=2)
    a, mask_a = standardize_inside(image)
    b, mask_b = standardize_inside(image * factor)
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(mask_a, mask_b)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_background_centres_fall_inside_the_organ(spatial_dims):
    image, label = organ_image(spatial_dims, seed=3)
    item = StandardizeInsided("image", mask_key="liver")({"image": image, "label": label})
    item = FgBgToIndicesd("label", image_key="liver", image_threshold=0.0)(item)
    organ_background = ((image > 0).any(0) & (label[0] == 0)).flatten()
    bg = torch.as_tensor(item["label_bg_indices"])
    assert len(bg) == int(organ_background.sum()) and bool(organ_background[bg].all())
    # the standardised image itself has no such level: half the organ lies below 0
    naive = FgBgToIndicesd("label", image_key="image", image_threshold=0.0)(dict(item))
    assert len(naive["label_bg_indices"]) < 0.9 * len(bg)
    patch = (6, 6) if spatial_dims == 2 else (4, 4, 4)
    crop = RandCropByPosNegLabeld(
        ["image", "label"],
        "label",
        patch,
        pos=0,
        neg=1,
        num_samples=20,
        fg_indices_key="label_fg_indices",
        bg_indices_key="label_bg_indices",
    )
    crop.set_random_state(seed=0)
    outside_level = float(item["image"].min())
    for sample in crop(item):
        centre = tuple(n // 2 for n in patch)
        assert float(sample["label"][(0, *centre)]) == 0
        assert bool((sample["image"][(slice(None), *centre)] > outside_level).any())  # an organ voxel


def test_an_image_with_no_inside_is_a_one_line_error():
    with pytest.raises(DataError, match="no value above 0.0"):
        standardize_inside(torch.zeros(1, 8, 8))
    with pytest.raises(DataError):
        StandardizeInsided("image")({"image": np.zeros((1, 4, 4, 4), dtype=np.float32)})
