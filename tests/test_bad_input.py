"""Bad input fails before any training, with one line naming the file or key."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from lightvessel_monai.errors import LightVesselError, find_user_error

from conftest import REPO, tiny_unet

TRAIN = str(REPO / "bundle" / "configs" / "train.json")


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def datalist(tmp_path, training, validation=None):
    if validation is None:
        validation = [
            {
                "image": png(tmp_path / "v.png", np.zeros((64, 64))),
                "label": png(tmp_path / "vl.png", np.zeros((64, 64))),
            }
        ]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": training, "validation": validation}))
    return str(path)


def good_pair(tmp_path, name="a"):
    image = png(tmp_path / f"{name}.png", np.random.default_rng(0).integers(0, 255, (64, 64)))
    label = png(tmp_path / f"{name}_label.png", np.zeros((64, 64)))
    return {"image": image, "label": label}


def preflight_error(tmp_path, **overrides) -> LightVesselError:
    """Run the workflow's initialize step (the pre-flight checks) and return the user error it raises."""
    overrides = {"bundle_root": str(tmp_path / "bundle"), "progress_bar": False, **overrides}
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **overrides)
    with pytest.raises(Exception) as info:
        workflow.initialize()
    err = find_user_error(info.value)
    assert err is not None, f"not a one-line user error: {info.value!r}"
    assert "\n" not in str(err)
    assert not (tmp_path / "bundle" / "models").exists(), "nothing may be trained or written"
    return err


def test_missing_file(tmp_path):
    entry = {"image": str(tmp_path / "nope.png"), "label": good_pair(tmp_path)["label"]}
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [entry]))
    assert "nope.png" in str(err) and "does not exist" in str(err)


def test_unreadable_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    entry = {"image": str(broken), "label": good_pair(tmp_path)["label"]}
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [entry]))
    assert "broken.png" in str(err)


def test_shape_mismatch(tmp_path):
    entry = {"image": good_pair(tmp_path)["image"], "label": png(tmp_path / "small.png", np.zeros((32, 64)))}
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [entry]))
    assert "small.png" in str(err) and "shape" in str(err)


def test_label_not_in_declared_classes(tmp_path):
    label = np.zeros((64, 64))
    label[:4, :4] = 7
    entry = {"image": good_pair(tmp_path)["image"], "label": png(tmp_path / "seven.png", label)}
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [entry]))
    assert "seven.png" in str(err) and "7" in str(err) and "[0, 255]" in str(err)


def test_empty_datalist(tmp_path):
    path = datalist(tmp_path, [])
    err = preflight_error(tmp_path, datalist_file=path)
    assert path in str(err) and "'training' is empty" in str(err)


def test_tap_path_that_does_not_exist(tmp_path):
    path = datalist(tmp_path, [good_pair(tmp_path)])
    err = preflight_error(tmp_path, datalist_file=path, **{"taps#enc2": "down_7"})
    assert "'down_7' does not exist" in str(err) and "down_1" in str(err)


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save(tiny_unet(2).state_dict(), ckpt)
    path = datalist(tmp_path, [good_pair(tmp_path)])
    err = preflight_error(tmp_path, datalist_file=path, teacher_checkpoint=str(ckpt))
    assert "other.pt" in str(err) and "does not fit BasicUNet" in str(err)


def test_command_line_gets_one_line_and_non_zero_exit(tmp_path):
    entry = {"image": str(tmp_path / "missing.png"), "label": good_pair(tmp_path)["label"]}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN]
    cmd += ["--datalist_file", datalist(tmp_path, [entry]), "--bundle_root", str(tmp_path / "bundle")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error:")]
    assert len(errors) == 1 and "missing.png" in errors[0] and "does not exist" in errors[0]
    assert "Traceback" not in proc.stderr


def test_4d_volume_where_3d_is_expected(tmp_path):
    import nibabel as nib

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 3), np.int16), affine), image)
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.uint8), affine), label)
    path = tmp_path / "dataset.json"
    entry = {"image": str(image), "label": str(label)}
    path.write_text(json.dumps({"training": [entry], "validation": [entry]}))
    overlay = str(REPO / "configs" / "data" / "ct3d.json")
    overrides = {"bundle_root": str(tmp_path / "bundle"), "datalist_file": str(path)}
    workflow = ConfigWorkflow(config_file=[TRAIN, overlay], workflow_type="train", **overrides)
    with pytest.raises(Exception) as info:
        workflow.initialize()
    err = find_user_error(info.value)
    assert err is not None and "four_d.nii.gz" in str(err) and "4 dimensions" in str(err)
    assert "\n" not in str(err)
