"""Learning curves: the plateau rule against hand-computed cases, the loss CSV, and LearningCurveHandler on real
MONAI engines."""

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, ValidationHandler, from_engine
from PIL import Image

from lightvessel_monai.handlers import LearningCurveHandler
from lightvessel_monai.reporting.learning_curves import (
    append_losses,
    plateau_iteration,
    read_curve,
    read_losses,
    write_curve,
    write_losses,
)


def test_plateau_iteration_hand_computed():
    its = [100, 200, 300, 400, 800]
    dice = [0.50, 0.70, 0.75, 0.752, 0.753]
    # best of the run 0.753; up to 200: 0.70 (gain 0.053), up to 300: 0.75 (gain 0.003 < 0.005, run goes past 400)
    assert plateau_iteration(its, dice) == 300
    # 400 leaves a gain of 0.001, not < 0.001; 800 has no run after it to show a plateau
    assert plateau_iteration(its, dice, tolerance=0.001) is None
    assert plateau_iteration(its, dice, tolerance=0.0011) == 400
    assert plateau_iteration(its, [0.1 * k for k in range(1, 6)]) is None  # still climbing
    # a noisy dip does not fake a plateau: best-so-far values are compared
    assert plateau_iteration([100, 200, 300, 400], [0.5, 0.7, 0.2, 0.9]) is None
    assert plateau_iteration([100, 200, 300, 400], [0.5, 0.7, 0.2, 0.7]) == 200
    assert plateau_iteration([100], [0.5]) is None and plateau_iteration([], []) is None
    with pytest.raises(ValueError, match="2 iterations but 1 values"):
        plateau_iteration([1, 2], [0.5])


def test_curve_csv_round_trip(tmp_path):
    path = tmp_path / "sub" / "c.csv"
    write_curve(path, [(8, 1, 0.25), (16, 2, 0.5)])
    assert read_curve(path) == [(8, 1, 0.25), (16, 2, 0.5)]
    assert read_curve(tmp_path / "none.csv") == []
    assert not list(tmp_path.glob("sub/.*tmp"))


def _engines(spatial_dims: int, max_epochs: int, output_dir, enabled: bool = True):
    torch.manual_seed(0)
    shape = (8,) * spatial_dims
    data = [{"image": torch.randn(1, *shape), "label": (torch.rand(1, *shape) > 0.5).float()} for _ in range(4)]
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    net = conv(1, 2, 3, padding=1)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    seen = []

    def post(batch):
        batch["pred"] = torch.nn.functional.one_hot(batch["pred"].argmax(1), 2).movedim(-1, 1).float()
        batch["label"] = torch.cat([1 - batch["label"], batch["label"]], 1)
        return batch

    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=net,
        postprocessing=post,
        decollate=False,
        key_val_metric={"dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.add_event_handler(Events.COMPLETED, lambda e: seen.append(e.state.metrics["dice"]))
    curve = LearningCurveHandler(evaluator, str(output_dir), name="student", enabled=enabled)
    curve.losses_seen = []  # what the trainer output held at each iteration, for the tests

    def log_loss(engine):
        output = engine.state.output  # decollated: a list of per-sample dicts, each holding the batch's loss
        loss = float((output[0] if isinstance(output, list) else output)["loss"])
        curve.losses_seen.append((engine.state.iteration, engine.state.epoch, {"loss": loss}))

    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
        loss_function=lambda p, y: torch.nn.functional.cross_entropy(p, y[:, 0].long()),
        train_handlers=[ValidationHandler(validator=evaluator, interval=2, epoch_level=True), curve],
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, log_loss)
    return trainer, curve, seen


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_learning_curve_handler_records_each_validation(tmp_path, spatial_dims):
    trainer, curve, seen = _engines(spatial_dims, 4, tmp_path)
    trainer.run()
    rows = read_curve(curve.csv_path)
    assert [(i, e) for i, e, _ in rows] == [(4, 2), (8, 4)]  # 2 iterations per epoch, validation every 2 epochs
    np.testing.assert_allclose([m for _, _, m in rows], seen, atol=1e-6)
    terms, losses = read_losses(curve.losses_csv_path)
    assert terms == ["loss"] and losses == curve.losses_seen and len(losses) == 8  # every iteration, exact values
    for path in (curve.png_path, curve.losses_png_path):
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size[0] > 100
    # a resumed run keeps the points before its start and replaces those after it; a torn last line is dropped
    write_curve(curve.csv_path, rows + [(99, 9, 0.123)])
    append_losses(curve.losses_csv_path, terms, [(99, 9, {"loss": 5.0})])
    with open(curve.losses_csv_path, "a") as f:
        f.write("100,9,0.2")  # a write cut short by a kill: no newline
    resumed, curve2, seen2 = _engines(spatial_dims, 4, tmp_path)
    resumed.load_state_dict({"epoch": 2, "max_epochs": 4, "epoch_length": 2})
    resumed.run()
    again = read_curve(curve2.csv_path)
    assert [(i, e) for i, e, _ in again] == [(4, 2), (8, 4)] and again[0] == rows[0]
    assert again[1][2] == pytest.approx(seen2[-1], abs=1e-6)
    terms2, losses2 = read_losses(curve2.losses_csv_path)
    assert terms2 == ["loss"] and losses2 == losses[:4] + curve2.losses_seen
    assert [r[0] for r in curve2.losses_seen] == [5, 6, 7, 8]
    # a fresh run in the same folder starts a fresh loss file
    fresh, curve3, _ = _engines(spatial_dims, 1, tmp_path)
    fresh.run()
    assert read_losses(curve3.losses_csv_path)[1] == curve3.losses_seen and len(curve3.losses_seen) == 2


def test_loss_csv_round_trip_and_torn_lines(tmp_path):
    path = tmp_path / "sub" / "l.csv"
    rows = [(1, 1, {"loss": 0.1, "loss_seg": 1 / 3}), (2, 1, {"loss": float("nan")}), (3, 2, {"loss_seg": 2.5e-9})]
    write_losses(path, ["loss", "loss_seg"], rows[:1])
    append_losses(path, ["loss", "loss_seg"], rows[1:])
    terms, back = read_losses(path)
    assert terms == ["loss", "loss_seg"] and back[0] == rows[0] and back[2] == rows[2]  # floats exact
    assert back[1][:2] == (2, 1) and list(back[1][2]) == ["loss"] and np.isnan(back[1][2]["loss"])
    assert path.read_text().splitlines()[2] == "2,1,nan,"  # an absent term is an empty cell
    with open(path, "a") as f:
        f.write("4,2,0.5,0.2")  # torn: no newline at the end
    assert read_losses(path)[1][-1][0] == 3
    assert read_losses(tmp_path / "none.csv") == ([], [])
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a loss CSV"):
        read_losses(tmp_path / "other.csv")
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_learning_curve_handler_disabled_writes_nothing(tmp_path):
    trainer, curve, seen = _engines(2, 2, tmp_path, enabled=False)
    trainer.run()
    assert len(seen) == 1 and not list(tmp_path.iterdir())
