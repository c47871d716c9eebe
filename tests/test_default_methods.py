"""Each real-data overlay's default method (issue 27: the best measured on it, never significantly worse than
training alone) is one of the method overlays, term for term, and a method overlay listed after it replaces it."""

import json

import pytest
from monai.bundle import ConfigParser

from conftest import REPO

CONFIGS = REPO / "bundle" / "configs"
DATA = REPO / "configs" / "data"
METHODS = REPO / "configs" / "methods"

# data overlay -> the method overlay whose terms it selects by default (None: the bundle's LightVessel)
DEFAULTS = {"drive": "kd", "xca": None, "lvsd300": None}
METHOD_KEYS = ("use_teacher", "distillation")


def merged(*files):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *map(str, files)])
    return parser


def method_part(parser):
    """What decides the method: the switches and the terms, with every @reference of a term read through."""
    raw = {key: parser[key] for key in METHOD_KEYS}
    referenced = {k for term in json.dumps(raw["distillation"]).split('"@')[1:] for k in [term.split('"')[0]]}
    return raw, {k: parser[k] for k in sorted(referenced) if "#" not in k}


@pytest.mark.parametrize("data", sorted(DEFAULTS))
def test_the_default_method_of_a_data_overlay_is_a_method_overlay(data):
    default = DEFAULTS[data]
    with_data = merged(DATA / f"{data}.json")
    expected = merged(METHODS / f"{default}.json") if default else merged()
    assert method_part(with_data) == method_part(expected)


@pytest.mark.parametrize("method", ["none", "lightvessel", "dskd"])
def test_a_method_overlay_after_the_data_overlay_replaces_its_default(method):
    after = merged(DATA / "drive.json", METHODS / f"{method}.json")
    alone = merged(METHODS / f"{method}.json")
    assert after["distillation"] == alone["distillation"]
    assert after["use_teacher"] == alone["use_teacher"]


def test_the_drive_default_builds_kd_and_not_lightvessel():
    parser = merged(DATA / "drive.json")
    method = parser.get_parsed_content("method")
    assert list(method.losses) == ["kd"] and method.weights == {"kd": 1.0}
    assert type(method.losses["kd"]).__name__ == "KnowledgeDistillation"
    assert method.losses["kd"].temperature == 4.0
