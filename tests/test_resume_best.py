"""After a resume, models/model.pt is replaced only by an epoch better than the killed run's best."""

from __future__ import annotations

import io

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from lightvessel_monai.handlers import BestCheckpointState


def _evaluator(scores, network):
    """A real ignite evaluator whose key metric at run ``i`` is ``scores[i]`` and which sets the weights to it."""
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "val_mean_dice"

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(engine):
        score = scores[engine.state.epoch - 1]
        engine.state.metrics["val_mean_dice"] = score
        with torch.no_grad():
            network.weight.fill_(score)  # the weights of this "epoch", to see which one model.pt holds

    return evaluator


def _saver(tmp_path, network, evaluator):
    saver = CheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt")
    saver.attach(evaluator)
    return saver


def test_the_best_score_survives_a_resume(tmp_path):
    network = torch.nn.Linear(1, 1, bias=False)
    first = _evaluator([0.6, 0.9], network)
    saver = _saver(tmp_path, network, first)
    first.run([0], max_epochs=2)  # epochs 1 and 2: 0.9 is the best, in model.pt
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == pytest.approx(0.9)
    buffer = io.BytesIO()
    torch.save({"best_checkpoint": BestCheckpointState(saver).state_dict()}, buffer)  # the resume file
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    # a new process: a fresh saver, restored from the resume file, then a poorer epoch (0.7) and a better one
    network2 = torch.nn.Linear(1, 1, bias=False)
    second = _evaluator([0.7, 0.95], network2)
    saver2 = _saver(tmp_path, network2, second)
    BestCheckpointState(saver2).load_state_dict(state["best_checkpoint"])
    second.run([0], max_epochs=1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == pytest.approx(0.9), (
        "a worse epoch replaced it"
    )
    second.run([0], max_epochs=2)
    assert abs(torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() - 0.95) < 1e-6


def test_without_the_restored_state_a_worse_epoch_would_replace_the_best(tmp_path):
    # the defect the state fixes: a fresh saver takes any first score as the best
    network = torch.nn.Linear(1, 1, bias=False)
    first = _evaluator([0.9], network)
    _saver(tmp_path, network, first)
    first.run([0], max_epochs=1)
    network2 = torch.nn.Linear(1, 1, bias=False)
    second = _evaluator([0.7], network2)
    _saver(tmp_path, network2, second)
    second.run([0], max_epochs=1)
    assert abs(torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() - 0.7) < 1e-6
