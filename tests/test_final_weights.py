"""FinalWeightsSaver: the weights of a completed run, and nothing from a run that stopped with an error."""

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from lightvessel_monai.handlers import FinalWeightsSaver, rank0_handlers

from conftest import tiny_unet


def _trainer(spatial_dims, handlers, max_epochs=2, fail_at=None):
    torch.manual_seed(0)
    net = tiny_unet(spatial_dims)
    size = (32,) * spatial_dims
    data = [{"image": torch.rand(1, *size), "label": (torch.rand(1, *size) > 0.5).float()} for _ in range(4)]
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def failing(pred, label):
        if fail_at is not None and trainer.state.iteration >= fail_at:
            raise FloatingPointError("diverged")
        return loss(pred, label)

    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
        loss_function=failing,
        train_handlers=handlers(net),
    )
    return trainer, net


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_final_weights_are_saved_when_the_run_completes(tmp_path, spatial_dims):
    saver = []
    trainer, net = _trainer(spatial_dims, lambda n: saver.append(FinalWeightsSaver(n, str(tmp_path))) or saver)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    trainer.run()
    saved = torch.load(tmp_path / "model_final.pt", weights_only=True)
    assert saved.keys() == net.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())  # the last iteration's weights
    assert any(not torch.equal(saved[k], start[k]) for k in start)  # not the initial ones


def test_nothing_is_saved_when_the_run_stops_with_an_error(tmp_path):
    trainer, _ = _trainer(2, lambda n: [FinalWeightsSaver(n, str(tmp_path))], fail_at=3)
    with pytest.raises(FloatingPointError):
        trainer.run()
    assert not (tmp_path / "model_final.pt").exists()


def test_a_ddp_wrapped_network_is_saved_unwrapped_and_only_rank0_keeps_the_saver(tmp_path):
    net = tiny_unet(2)
    wrapped = torch.nn.DataParallel(net)
    path = FinalWeightsSaver(wrapped, str(tmp_path), "final.pt").save()
    assert torch.load(path, weights_only=True).keys() == net.state_dict().keys()  # no "module." prefix
    saver = FinalWeightsSaver(net, str(tmp_path))
    assert rank0_handlers([saver]) == [saver]  # one process: rank 0
