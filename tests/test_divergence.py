"""A run whose loss explodes while staying finite, or whose network never segments, stops with one line (issue 31)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from test_bundle_3d import OVERLAY as SYNTHETIC_3D
from test_bundle_3d import TINY_3D
from torch.utils.data import DataLoader

from lightvessel_monai.errors import ConfigKeyError, TrainingDivergedError
from lightvessel_monai.handlers import StopOnLossGrowth, StopOnZeroDice

from conftest import tiny_unet
from test_bundle import run_bundle


def _scripted(outputs, handler):
    engine = Engine(lambda e, b: outputs[e.state.iteration - 1])
    handler.attach(engine)
    return engine


def test_a_finite_explosion_stops_at_the_window_naming_the_term_that_grew():
    # the run: 1.48 -> 7.0e11 -> 8.8e16 -> 7.2e19, the segmentation loss steady, FSD exploding
    totals = [1.48, 7.0e11, 8.8e16, 7.2e19, 1e20]
    outputs = [{"loss": t, "loss_seg": 1.0, "loss_fsd": t - 1.0 if t > 2 else 0.48} for t in totals]
    engine = _scripted(outputs, StopOnLossGrowth(factor=1000, window=3, warmup=10))
    with pytest.raises(TrainingDivergedError) as info:
        engine.run(range(5), max_epochs=1)
    message = str(info.value)
    assert engine.state.iteration == 4  # iterations 2, 3, 4 above 1000 x 1.48
    assert "\n" not in message and "iteration 4" in message and "loss_fsd = 7.2e+19" in message
    assert "divergence_factor 1000" in message and "divergence_window 3" in message


def test_a_healthy_or_briefly_spiking_loss_runs_to_the_end():
    falling = [{"loss": 2.0 / (1 + i)} for i in range(30)]
    _scripted(falling, StopOnLossGrowth()).run(range(30), max_epochs=1)
    spikes = [{"loss": 5e3 if i in (12, 13, 20) else 1.0} for i in range(30)]  # never 3 in a row
    _scripted(spikes, StopOnLossGrowth(factor=1000, window=3)).run(range(30), max_epochs=1)
    off = [{"loss": 1.0 if i == 0 else 1e9} for i in range(10)]
    _scripted(off, StopOnLossGrowth(factor=0)).run(range(10), max_epochs=1)  # factor 0: off
    for bad in ({"factor": 0.5}, {"factor": True}, {"window": 0}):
        with pytest.raises(ConfigKeyError):
            StopOnLossGrowth(**bad)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_real_trainer_with_a_huge_learning_rate_is_stopped(spatial_dims):
    torch.manual_seed(0)
    net = tiny_unet(spatial_dims)
    size = (32,) * spatial_dims
    data = [{"image": torch.rand(1, *size), "label": (torch.rand(1, *size) > 0.7).float()} for _ in range(4)]
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=20,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1e6, momentum=0.9),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[StopOnLossGrowth(name="student")],
    )
    with pytest.raises(TrainingDivergedError, match="student training diverged at iteration"):
        trainer.run()
    assert trainer.state.iteration < 40


def _validated_run(scores, max_epochs, after=0.5, min_validations=3):
    """A trainer of ``max_epochs`` one-iteration epochs validated after each; validation k scores ``scores[k]``."""
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.COMPLETED)
    def score(e):
        e.state.metrics["val_mean_dice"] = scores[len(seen)]
        seen.append(1)

    seen: list[int] = []
    trainer = Engine(lambda e, b: {"loss": 1.0})
    StopOnZeroDice(evaluator, after=after, min_validations=min_validations).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run(range(1)))
    return trainer


def test_dice_zero_at_every_validation_past_half_the_run_stops_it():
    trainer = _validated_run([0.0] * 10, max_epochs=10)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.run(range(1), max_epochs=10)
    assert trainer.state.epoch == 5 and "was 0 at all 5 validations up to epoch 5 of 10" in str(info.value)


def test_a_late_learner_or_a_short_run_is_not_stopped():
    # function matching at T = 4 sat at 0 for its first quarter, then learned
    _validated_run([0.0] * 4 + [0.7] * 6, max_epochs=10).run(range(1), max_epochs=10)
    _validated_run([0.0, 0.0], max_epochs=2).run(range(1), max_epochs=2)  # fewer than min_validations
    _validated_run([0.0] * 10, max_epochs=10, after=0).run(range(1), max_epochs=10)  # off
    with pytest.raises(ConfigKeyError, match="zero_dice_after"):
        StopOnZeroDice(Engine(lambda e, b: None), after=2)


@pytest.mark.integration
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_finitely_diverging_student_fails_the_command_and_writes_no_report(tmp_path, spatial_dims):
    root = tmp_path / "bundle"
    configs = ["train.json"] + ([SYNTHETIC_3D] if spatial_dims == 3 else [])
    # the 1e6 in 2D; in 3D 1e6 reaches NaN by iteration 3 (the NaN guard's case), 1e3 grows finitely
    lr = 1e6 if spatial_dims == 2 else 1e3
    sets = {**(TINY_3D if spatial_dims == 3 else {}), "learning_rate": lr, "max_epochs": 6}
    if spatial_dims == 3:
        sets["dataset_dir"] = root / "data"
    proc = run_bundle("training", configs, root, sets, check=False, tiny=spatial_dims == 2)
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error:")]
    assert len(lines) == 1 and "student training diverged at iteration" in lines[0], proc.stderr[-3000:]
    assert "its early minimum" in lines[0] and "divergence_factor 1000" in lines[0]  # the growth rule, not NaN
    assert not (root / "eval" / "report.csv").exists(), "a report claims a trained student"
    assert not (root / "models" / "model_final.pt").exists()
    assert list((root / "models" / "teacher").glob("teacher_*.pt")), "the teacher, trained before, stays cached"
