"""The training data pipeline: CacheDataset caches the deterministic preprocessing (and the crop indices), and the
random transforms never write into the cache (``copy_cache: false``)."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from conftest import REPO, SHARED_DATA

CONFIGS = REPO / "bundle" / "configs"
TINY = {
    "synthetic#num_train": 3,
    "synthetic#num_val": 1,
    "synthetic#size": 96,
    "patch_size": [32, 32],
    "batch_size": 2,
    "samples_per_image": 2,
}


def _parser(root, overlay=None, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")] + ([str(overlay)] if overlay else []))
    parser["bundle_root"] = str(root)
    parser["dataset_dir"] = str(root / "data")
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _snapshot(cache):
    return [{k: np.array(v) for k, v in item.items()} for item in cache]


@pytest.mark.parametrize("overlay", [None, "xca"])
def test_cache_holds_the_preprocessing_and_survives_augmentation(tmp_path, overlay):
    if overlay == "xca" and not (SHARED_DATA / "XCA_coronary_vessels").is_dir():
        pytest.skip("XCA coronary angiograms not found (../shared is absent)")
    path = REPO / "configs" / "data" / f"{overlay}.json" if overlay else None
    parser = _parser(tmp_path, path, **(TINY if overlay is None else {}))
    dataset = parser.get_parsed_content("train#dataset")
    loader = parser.get_parsed_content("train#dataloader")
    item = dataset._cache[0]
    # the cached item is the preprocessed image, not file names: the deterministic part really is cached
    assert isinstance(item["image"], MetaTensor) and item["image"].ndim == 3
    label = np.asarray(item["label"])
    np.testing.assert_array_equal(np.sort(item["label_fg_indices"]), np.flatnonzero(label[0] > 0))
    assert len(item["label_fg_indices"]) + len(item["label_bg_indices"]) == label[0].size
    before = _snapshot(dataset._cache)
    for _ in range(2):
        for batch in loader:
            assert sorted(batch) == ["image", "label"]  # the indices are consumed by the crop
            assert tuple(batch["image"].shape[2:]) == tuple(parser.get_parsed_content("patch_size"))
            batch["image"].add_(1.0)  # even a caller writing into the batch must not reach the cache
    after = _snapshot(dataset._cache)
    for b, a in zip(before, after, strict=True):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the validation pipeline is unchanged: no index keys in its items
    assert "label_fg_indices" not in parser.get_parsed_content("validate#dataset")[0]
    assert torch.is_tensor(batch["label"])
