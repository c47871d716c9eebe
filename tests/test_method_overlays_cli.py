"""Every method overlay through the real command, ``python -m monai.bundle run training``, in a fresh process.

Parsing an overlay inside the test process is not enough: that process has already imported every
``lightvessel_monai`` module, so a config that forgets an import (``none.json`` once failed with ``module
'lightvessel_monai' has no attribute 'losses'``) still passes there. Here each overlay runs alone, on a tiny budget.
"""

import pytest
import torch
from monai.bundle import ConfigParser

from lightvessel_monai.compare.runs import method_config

from conftest import REPO
from test_bundle import CONFIGS, run_bundle

METHODS = sorted(p.stem for p in (REPO / "configs" / "methods").glob("*.json"))


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One bundle root for all overlays: the teacher is trained by the first method that needs it, then reused."""
    return tmp_path_factory.mktemp("bundle")


def test_every_method_overlay_is_listed():
    methods = {"none", "lightvessel", "fsd", "asd", "kd", "at", "cwd", "skd", "emkd", "dskd", "dskd_kd", "gkd"}
    assert methods <= set(METHODS)


@pytest.mark.integration
@pytest.mark.parametrize("method", METHODS)
def test_method_overlay_runs_through_the_command_line(method, shared_root, tmp_path):
    overlays = [str(p) for p in method_config(method)]  # dskd_kd: dskd.json, then dskd_kd.json
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *overlays])
    distillation = parser["distillation"]
    if isinstance(distillation, str):  # an overlay that selects another mapping by reference
        distillation = parser[distillation.lstrip("@")]
    terms = sorted(distillation)
    uses_teacher = parser.get_parsed_content("use_teacher")
    run = tmp_path / "run"
    proc = run_bundle(
        "training",
        ["train.json", *overlays],
        shared_root,
        extra={
            "max_epochs": 1,
            "ckpt_dir": str(run / "models"),
            "output_dir": str(run / "eval"),
            "teacher_dir": str(shared_root / "teacher"),
            "resume_dir": str(run / "resume"),
            **({"gkd_psae_iterations": 2, "gkd_act_iterations": 2} if method == "gkd" else {}),
        },
    )
    log = proc.stdout + proc.stderr
    for term in ["seg"] + terms:
        assert f"loss_{term}" in log, f"{method}: loss_{term} was not logged"
    assert ("teacher" in (run / "eval" / "report.csv").read_text()) == bool(uses_teacher)
    state = torch.load(run / "models" / "model.pt", weights_only=True)
    assert state.keys() == parser.get_parsed_content("network").state_dict().keys()  # the plain student


def test_a_composed_overlay_alone_stops_with_one_line_naming_its_base(tmp_path):
    """dskd_kd.json adds KD to dskd.json's terms with MONAI's '+distillation' merge; listed alone it would add KD
    to the default method (LightVessel) and train something else than its name says, so it stops first."""
    run = tmp_path / "run"
    proc = run_bundle(
        "training",
        ["train.json", str(REPO / "configs" / "methods" / "dskd_kd.json")],
        tmp_path,
        extra={"ckpt_dir": str(run / "models"), "output_dir": str(run / "eval")},
        check=False,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "configs/methods/dskd.json" in errors[0] and "dskd_ddl" in errors[0] and "fsd, asd, dskd_kd" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (run / "models").exists() or not any((run / "models").rglob("*.pt"))
