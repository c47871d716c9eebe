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
    # the 64 x 64 test images are smaller than the default 128 x 128 patch, which pre-flight refuses on its own
    overrides = {"bundle_root": str(tmp_path / "bundle"), "progress_bar": False, "patch_size": [64, 64], **overrides}
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


def test_an_rgba_png_where_one_channel_is_expected(tmp_path):
    rgba = png(tmp_path / "rgba.png", np.full((64, 64, 4), 200))
    entry = {"image": rgba, "label": good_pair(tmp_path)["label"]}
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [entry]))
    assert "rgba.png" in str(err) and "has 4 channels where 1 are expected" in str(err)


def test_an_rgb_label(tmp_path):
    label = png(tmp_path / "rgb_label.png", np.zeros((64, 64, 3)))
    entry = {"image": good_pair(tmp_path)["image"], "label": label}
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [entry]))
    assert "rgb_label.png" in str(err) and "3 channels; a label must hold one channel" in str(err)


def test_an_image_smaller_than_the_patch(tmp_path):
    path = datalist(tmp_path, [good_pair(tmp_path)])
    err = preflight_error(tmp_path, datalist_file=path, patch_size=[96, 48])
    assert "a.png" in str(err) and "(64, 64), smaller than the training patch (96, 48) in dim 0" in str(err)


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


def test_a_boolean_key_that_is_not_a_boolean(tmp_path):
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [good_pair(tmp_path)]), amp="maybe")
    assert "'amp'" in str(err) and "maybe" in str(err)


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), ("true", True), ("True", True), ("1", True), (1, True)]
    + [(False, False), ("false", False), ("False", False), ("0", False), (0, False)],
)
def test_booleans_from_the_command_line(value, expected):
    from lightvessel_monai.pipeline.settings import as_bool

    assert as_bool(value, "amp") is expected


@pytest.mark.parametrize("value", ["yes", "", "2", 2, 1.0, None, "falsey"])
def test_anything_else_is_not_a_boolean(value):
    from lightvessel_monai.errors import ConfigKeyError
    from lightvessel_monai.pipeline.settings import as_bool

    with pytest.raises(ConfigKeyError, match="'progress_bar' must be a boolean"):
        as_bool(value, "progress_bar")


@pytest.mark.integration
def test_lower_case_false_on_the_command_line_turns_the_progress_bar_off(tmp_path):
    # with "false" read as a truthy string the progress bar would draw its tqdm bar ("100%|███") on stderr
    from test_bundle import run_bundle

    none = REPO / "configs" / "methods" / "none.json"  # no teacher terms: use_teacher false is valid
    flags = {"progress_bar": "false", "resume": "false", "amp": "0", "use_teacher": "false", "max_epochs": 1}
    proc = run_bundle("training", ["train.json", none], tmp_path / "bundle", flags)
    assert "%|" not in proc.stderr + proc.stdout  # no tqdm bar
    assert not (tmp_path / "bundle" / "models" / "resume").exists(), "resume false writes no resume state"
    assert not list((tmp_path / "bundle" / "models").rglob("teacher_*.pt")), "use_teacher false trains no teacher"


class _WritesAFile:
    """Unpickling this runs ``Path.write_text``: the side effect shows whether a loader executed pickled code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        from pathlib import Path

        return (Path(self.target).write_text, ("pwned",))


def _malicious_checkpoint(tmp_path):
    witness = tmp_path / "witness.txt"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _WritesAFile(witness)}, path)
    assert not witness.exists()
    return path, witness


def test_a_checkpoint_with_pickled_code_is_refused_and_nothing_runs(tmp_path):
    from lightvessel_monai.checkpoints import load_state_dict_checked
    from lightvessel_monai.errors import CheckpointMismatchError

    path, witness = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(tiny_unet(2), path, "teacher")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not a plain state dict" in message
    assert "weights_only=False" not in message, "never suggest the unsafe load"
    assert not witness.exists(), "the pickled callable ran"


def test_a_resume_state_with_pickled_code_is_refused_and_nothing_runs(tmp_path):
    from ignite.engine import Engine

    from lightvessel_monai.errors import CheckpointMismatchError
    from lightvessel_monai.handlers import ResumeCheckpoint

    path, witness = _malicious_checkpoint(tmp_path)
    net = tiny_unet(2)
    handler = ResumeCheckpoint(save_dir=str(tmp_path), filename=path.name, save_dict={"network": net})
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 1
    with pytest.raises(CheckpointMismatchError, match="not a plain state dict") as info:
        handler.load(engine)
    assert "weights_only=False" not in str(info.value) and not witness.exists()


@pytest.mark.parametrize(
    "key, value",
    [("max_epochs", -1), ("max_epochs", "abc"), ("max_epochs", 2.5), ("val_interval", 0), ("patch_size", [64, 0])]
    + [("batch_size", True), ("num_workers", -1), ("learning_rate", 0.0), ("teacher_learning_rate", "fast")]
    + [("term_grad_interval", -1), ("term_grad_interval", 1.5), ("resume_every_n_iterations", -3)],
)
def test_numbers_of_the_wrong_type_or_sign_fail_pre_flight(tmp_path, key, value):
    err = preflight_error(tmp_path, datalist_file=datalist(tmp_path, [good_pair(tmp_path)]), **{key: value})
    assert f"'{key}'" in str(err) and repr(value) in str(err)


def test_an_output_folder_that_cannot_be_written_fails_pre_flight(tmp_path):
    # tests run as root, which may write anywhere: a path below a regular file is unwritable for everyone
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    err = preflight_error(
        tmp_path, datalist_file=datalist(tmp_path, [good_pair(tmp_path)]), output_dir=str(blocker / "eval")
    )
    assert "'output_dir'" in str(err) and str(blocker / "eval") in str(err) and "is a file" in str(err)


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    from lightvessel_monai.pipeline.settings import check_writable

    check_writable({"ckpt_dir": tmp_path / "models" / "teacher", "output_dir": tmp_path})
    assert list(tmp_path.iterdir()) == [], "the probe created a folder or left a file"


def test_importing_the_package_leaves_the_excepthook_alone():
    code = "import sys; hook = sys.excepthook; import lightvessel_monai.losses; print(sys.excepthook is hook)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True", "a host process (MONAI Label) must keep its own excepthook"


def test_an_overlay_with_an_unknown_term_key_is_a_one_line_error(tmp_path):
    path = datalist(tmp_path, [good_pair(tmp_path)])
    term = {"loss": "@lightvessel#fsd#loss", "wieght": 2.0}
    err = preflight_error(tmp_path, datalist_file=path, distillation={"fsd": term})
    assert "'distillation#fsd' has unknown key(s) wieght" in str(err) and "loss, weight, handlers" in str(err)


def test_an_overlay_with_a_term_without_a_loss_is_a_one_line_error(tmp_path):
    path = datalist(tmp_path, [good_pair(tmp_path)])
    err = preflight_error(tmp_path, datalist_file=path, distillation={"kd": {"weight": 1.0}})
    assert "'distillation#kd' has no 'loss'" in str(err)
