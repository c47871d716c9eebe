"""The private MONAI/ignite parts behind handlers/library_internals.py: these fail when an upgrade renames them."""

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from monai.utils import CommonKeys

from lightvessel_monai.handlers.library_internals import iteration_output, key_metric_entries


def test_key_metric_entries_read_the_best_score_monais_saver_keeps(tmp_path):
    net = torch.nn.Linear(1, 1)
    scores = iter([0.2, 0.7, 0.5])
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(engine):
        engine.state.metrics["dice"] = next(scores)

    evaluator.state.key_metric_name = "dice"
    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    saver.attach(evaluator)
    assert key_metric_entries(saver) == []
    for _ in range(3):
        evaluator.run([0], max_epochs=evaluator.state.epoch + 1)
    entries = key_metric_entries(saver)
    assert [p for p, _ in entries] == [0.7] and (tmp_path / "model.pt").is_file()
    assert all(type(p) is float and type(n) is str for p, n in entries)  # loadable with weights_only=True


def test_iteration_output_holds_the_batch_while_monais_trainer_computes_the_loss():
    seen = []
    net = torch.nn.Conv2d(1, 2, 1)

    def loss(pred, label):
        output = iteration_output(trainer)
        seen.append(sorted(k for k in output if k in (CommonKeys.IMAGE, CommonKeys.LABEL, CommonKeys.PRED)))
        output["loss_extra"] = torch.tensor(1.0)
        return pred.mean()

    data = [{"image": torch.rand(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}]
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        decollate=False,
    )
    trainer.run()
    # the batch and the prediction are there during the loss; what the loss added is kept after the iteration
    assert seen == [[CommonKeys.IMAGE, CommonKeys.LABEL, CommonKeys.PRED]]
    assert trainer.state.output["loss_extra"] == 1.0 and CommonKeys.LOSS in trainer.state.output
