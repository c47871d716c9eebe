"""The teacher cache key: it changes with the preprocessing, augmentation and loss, and not with random draws."""

import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandAdjustContrastd, RandAffined, ScaleIntensityd
from torch import nn

from lightvessel_monai.pipeline.stages import describe, teacher_fingerprint

from conftest import REPO

TRAIN = str(REPO / "bundle" / "configs" / "train.json")


def _chain(gamma=(0.7, 1.5), rotate=0.3, minv=0.0):
    return Compose(
        [
            ScaleIntensityd("image", minv=minv, maxv=1.0),
            RandAdjustContrastd("image", prob=1.0, gamma=gamma),
            RandAffined("image", prob=1.0, rotate_range=rotate, spatial_size=(8, 8)),
        ]
    )


def test_description_holds_settings_not_random_draws():
    chain = _chain()
    before = json.dumps(describe(chain))
    chain.set_random_state(3)
    for _ in range(3):
        chain({"image": torch.rand(1, 12, 12)})
    assert json.dumps(describe(chain)) == before  # gamma_value, rotate_params ... are drawn, not settings
    text = before
    for setting in ('"gamma": [0.7, 1.5]', '"rotate_range": [0.3]', '"minv": 0.0', '"prob": 1.0'):
        assert setting in text, setting
    assert "gamma_value" not in text and "rotate_params" not in text


def test_fingerprint_changes_with_the_recipe_only():
    teacher = nn.Conv2d(1, 2, 3)
    datalist = [{"image": "/data/a.png", "label": "/data/a_gt.png"}]
    settings = {"max_epochs": 10}

    def key(**recipe_args):
        loss = recipe_args.pop("loss", DiceCELoss(to_onehot_y=True, softmax=True))
        return teacher_fingerprint(teacher, datalist, settings, {"transforms": _chain(**recipe_args), "loss": loss})

    base = key()
    assert key() == base
    assert key(gamma=(0.5, 2.0)) != base
    assert key(rotate=0.5) != base
    assert key(minv=1.0) != base
    assert key(loss=DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.5)) != base
    assert key(loss=DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)) != base  # a sub-loss setting
    assert teacher_fingerprint(teacher, datalist, settings) != base  # no recipe: a different key, not a clash


@pytest.mark.parametrize("overlay", ["xca.json", "synthetic_3d.json"])
def test_bundle_fingerprint_follows_the_overlays_preprocessing(overlay, tmp_path):
    def fingerprint(**overrides):
        parser = ConfigParser()
        parser.read_config([TRAIN, str(REPO / "configs" / "data" / overlay)])
        parser["bundle_root"] = str(tmp_path)
        parser["datalist_file"] = str(tmp_path / "none.json")  # the key needs no data on disk
        parser["train#datalist"] = [{"image": "a.nii.gz", "label": "a_gt.nii.gz"}]
        for k, v in overrides.items():
            parser[k] = v
        return parser.get_parsed_content("teacher_fingerprint")

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(**{"teacher_loss#lambda_ce": 0.5}) != base
    assert fingerprint(max_epochs=999) == base  # the student's budget does not touch the teacher
    if overlay == "xca.json":
        assert fingerprint(clahe_clip_limit=0.02) != base
    else:
        assert fingerprint(pixdim=[1.0, 1.0, 2.0]) != base


def test_the_teacher_key_follows_the_data_the_dataset_loads(tmp_path):
    """MONAI Label replaces ``train#dataset#data`` with its own labels: the teacher cache must follow that list."""

    def fingerprint(**overrides):
        parser = ConfigParser()
        parser.read_config(TRAIN)
        parser["bundle_root"] = str(tmp_path)
        parser["datalist_file"] = str(tmp_path / "none.json")
        parser["train#datalist"] = [{"image": "a.png", "label": "a_gt.png"}, {"image": "b.png", "label": "b_gt.png"}]
        for k, v in overrides.items():
            parser[k] = v
        return parser.get_parsed_content("teacher_fingerprint"), parser.get_parsed_content("run_fingerprint")

    base = fingerprint()
    same = [{"image": "a.png", "label": "a_gt.png"}, {"image": "b.png", "label": "b_gt.png"}]
    assert fingerprint(**{"train#dataset#data": same}) == base  # the command line's data: the same keys
    labels = [{"image": "x.png", "label": "x_gt.png"}]  # what MONAI Label's train task puts there
    teacher_key, run_key = fingerprint(**{"train#dataset#data": labels})
    assert teacher_key != base[0] and run_key != base[1]
