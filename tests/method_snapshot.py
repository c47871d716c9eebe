"""What each method overlay builds, as plain JSON: terms, weights, trainable parameters, handlers, taps, fingerprints.

``tests/data/method_snapshot.json`` was written by this module *before* the distillation mapping became one
:class:`~lightvessel_monai.losses.method.DistillationMethod` (issue 29); ``test_method_snapshot.py`` rebuilds every
overlay and compares, so that the refactor provably builds the same methods and keeps every fingerprint (stored teachers
and resume files stay valid). Regenerate only for a deliberate change: ``python tests/method_snapshot.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "method_snapshot.json"
# small synthetic data: the fingerprints hash file names and settings, not the pixels' size
OVERRIDES = {"synthetic#num_train": 4, "synthetic#num_val": 2, "synthetic#size": 64, "patch_size": [32, 32]}


def method_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "configs" / "methods").glob("*.json"))


def describe_method(name: str | None, dataset_dir: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build train.json (+ the method overlay, base first, and ``extra`` keys) and describe what it made."""
    from monai.bundle import ConfigParser

    from lightvessel_monai.compare.runs import method_config

    configs = [REPO / "bundle" / "configs" / "train.json"]
    if name is not None:
        configs += method_config(name, REPO)
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in {**OVERRIDES, "dataset_dir": dataset_dir, **(extra or {})}.items():
        parser[key] = value
    optimizer = parser.get_parsed_content("optimizer")
    distillation = parser.get_parsed_content("distillation") or {}
    terms = {}
    for term, entry in distillation.items():
        loss = entry["loss"]
        terms[term] = {
            "loss": type(loss).__name__,
            "weight": entry.get("weight", 1.0),
            "handlers": [type(h).__name__ for h in entry.get("handlers") or []],
            "teacher_taps": sorted(getattr(loss, "required_teacher_taps", ())),
            "student_taps": sorted(getattr(loss, "required_student_taps", ())),
        }
    params = [p for group in optimizer.param_groups for p in group["params"]]
    save_dict = parser.get_parsed_content("train#handlers")
    resume = [h for h in save_dict if type(h).__name__ == "ResumeCheckpoint"][0]
    return {
        "terms": terms,
        "optimizer_tensors": len(params),
        "optimizer_numel": int(sum(p.numel() for p in params)),
        "resume_keys": sorted(resume.save_dict),
        "teacher_fingerprint": parser.get_parsed_content("teacher_fingerprint"),
        "run_fingerprint": parser.get_parsed_content("run_fingerprint"),
    }


# the unlabelled-image and mixup parts of the run fingerprint (the training images again, as unlabelled ones)
UNLABELED = {"unlabeled_glob": "$@dataset_dir + '/imagesTr/*.png'", "unlabeled_zoom": 1.1, "unlabeled_ratio": 0.5}


def snapshot(dataset_dir: str) -> dict[str, Any]:
    data = {str(name): describe_method(name, dataset_dir) for name in [None, *method_names()]}
    data["fm_kd+unlabeled"] = describe_method("fm_kd", dataset_dir, UNLABELED)
    data["pseudo_label+unlabeled+cutmix"] = describe_method(
        "pseudo_label", dataset_dir, {**UNLABELED, "mixup_prob": 0.5, "mixup_mode": "cutmix"}
    )
    return data


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        data = snapshot(str(Path(tmp) / "synthetic"))
    SNAPSHOT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} ({len(data)} methods)")
