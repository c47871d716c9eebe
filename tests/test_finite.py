"""NaN and Inf: a diverging loss term stops training with its name; NaN weights are never loaded or cached."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.errors import CheckpointMismatchError, TrainingDivergedError
from lightvessel_monai.handlers import StopOnNonFiniteLoss

from conftest import tiny_unet


def _engine_with_losses(per_iteration):
    """An ignite engine whose output at iteration i is ``per_iteration[i - 1]``, with the handler attached."""

    def step(engine, batch):
        return per_iteration[engine.state.iteration - 1]

    engine = Engine(step)
    StopOnNonFiniteLoss("student").attach(engine)
    return engine


def test_finite_losses_run_to_the_end():
    outputs = [{"loss": torch.tensor(1.0), "loss_seg": 0.5, "pred": torch.full((2,), float("nan"))}] * 4
    engine = _engine_with_losses(outputs)
    engine.run(range(2), max_epochs=2)  # a NaN outside the loss terms (say, in a prediction) is not a loss
    assert engine.state.iteration == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_first_non_finite_term_stops_training_and_is_named(bad):
    good = {"loss": torch.tensor(1.0), "loss_seg": torch.tensor(0.5), "loss_fsd": torch.tensor(0.1)}
    outputs = [good, good, {**good, "loss_fsd": torch.tensor(bad), "loss": torch.tensor(bad)}, good]
    engine = _engine_with_losses(outputs)
    with pytest.raises(TrainingDivergedError) as info:
        engine.run(range(4), max_epochs=1)
    message = str(info.value)
    assert "\n" not in message and "iteration 3" in message and "loss_fsd" in message and "loss_seg" not in message
    assert engine.state.iteration == 3


def test_decollated_outputs_are_checked_too():
    outputs = [[{"loss": 1.0}, {"loss": float("nan")}]]
    with pytest.raises(TrainingDivergedError, match="iteration 1"):
        _engine_with_losses(outputs).run(range(1), max_epochs=1)


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    net = tiny_unet(2)
    state = net.state_dict()
    key = next(k for k, v in state.items() if torch.is_floating_point(v))
    state[key] = torch.full_like(state[key], float("nan"))
    path = tmp_path / "teacher.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="NaN or infinite") as info:
        load_state_dict_checked(tiny_unet(2), path, "teacher")
    assert key in str(info.value) and str(path) in str(info.value)


@pytest.mark.integration
def test_a_diverging_run_fails_with_one_line_and_keeps_the_cached_teacher_out(tmp_path):
    # a learning rate of 1e6 drives the teacher's loss to NaN within a few iterations
    from test_bundle import run_bundle

    sets = {"synthetic#num_train": 4, "synthetic#num_val": 1, "synthetic#size": 64, "image_size": "[64,64]"}
    sets.update({"patch_size": "[32,32]", "samples_per_image": 2, "batch_size": 2, "teacher_max_epochs": 20})
    sets.update({"teacher_learning_rate": 1e6, "progress_bar": "False", "teacher_def#features": "[4,4,8,8,16,4]"})
    proc = run_bundle("training", ["train.json"], tmp_path / "bundle", sets, check=False, tiny=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error:")]
    assert len(lines) == 1 and "teacher training diverged at iteration" in lines[0], proc.stderr[-3000:]
    assert not list((tmp_path / "bundle" / "models" / "teacher").glob("teacher_*.pt")), "a NaN teacher was cached"
