"""Issue 29: the method object builds what the config built before it, and train.json stays readable.

``tests/data/method_snapshot.json`` was written by ``tests/method_snapshot.py`` at 10edd2c, before the
``distillation`` mapping became one ``DistillationMethod``: every method overlay's terms, weights, handlers, taps,
optimiser parameters, resume keys and both fingerprints (the keys of stored teachers and resume files).
"""

import json

import pytest
from method_snapshot import SNAPSHOT, snapshot

from conftest import REPO

LIMIT = 120  # characters of one train.json value (comments excepted)


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    return snapshot(str(tmp_path_factory.mktemp("synthetic")))


def test_every_overlay_builds_the_method_it_built_before_the_refactor(current):
    before = json.loads(SNAPSHOT.read_text())
    assert sorted(current) == sorted(before)
    for name, expected in before.items():
        assert current[name] == expected, name


def test_the_method_object_is_what_the_trainer_optimizer_and_resume_file_get(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle" / "configs" / "train.json")])
    parser["dataset_dir"] = str(tmp_path / "data")  # nothing here reads the data
    method = parser.get_parsed_content("method")
    assert sorted(method.terms) == ["asd", "fsd"]
    # one object: the optimiser's parameters and the preflight's method come from it
    assert parser.get_parsed_content("preflight").method is method
    optimizer = parser.get_parsed_content("optimizer")
    assert [p for g in optimizer.param_groups for p in g["params"]] == method.parameters(
        parser.get_parsed_content("network")
    )


def _values(node, where=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if not str(key).startswith("_comment"):
                yield from _values(value, f"{where}#{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _values(value, f"{where}#{index}")
    elif isinstance(node, str):
        yield where.lstrip("#"), node


def test_no_train_json_value_is_longer_than_the_limit():
    config = json.loads((REPO / "bundle" / "configs" / "train.json").read_text())
    long = {key: len(value) for key, value in _values(config) if len(value) > LIMIT}
    assert long == {}, f"train.json values over {LIMIT} characters (make each a named function): {long}"
