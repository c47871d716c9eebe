"""The machinery shared by every method: distiller parameters, method handlers, tap channels, resume state,
and the evaluation pieces of the comparison command."""

import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from lightvessel_monai.losses import ChannelWiseDistillation, DistillationMethod, Distiller, student_parameters
from lightvessel_monai.reporting.evaluation import count_flops, evaluate_cases, mean_over_cases, summarise
from lightvessel_monai.reporting.figures import error_overlay
from lightvessel_monai.taps import tap_channels

from conftest import tiny_unet


class WithCritic(Distiller):
    external_modules = ("critic",)

    def __init__(self):
        super().__init__()
        self.adapter = nn.Conv2d(2, 3, 1)
        self.critic = nn.Linear(3, 1)
        self.frozen = nn.Parameter(torch.zeros(1), requires_grad=False)


def test_student_parameters_add_adapters_but_not_external_or_frozen_modules():
    net = tiny_unet(2)
    distiller = WithCritic()
    params = student_parameters(net, {"a": {"loss": distiller}, "again": {"loss": distiller}})
    ids = {id(p) for p in params}
    assert len(params) == len(ids)  # no duplicates, even for a distiller listed twice
    assert all(id(p) in ids for p in net.parameters())
    assert all(id(p) in ids for p in distiller.adapter.parameters())
    assert not any(id(p) in ids for p in distiller.critic.parameters())
    assert id(distiller.frozen) not in ids
    assert len(params) == len(list(net.parameters())) + 2


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tap_channels_reads_the_channel_count_of_each_tap_and_restores_train_mode(spatial_dims):
    net = BasicUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=2, features=(4, 6, 8, 10, 12, 5))
    net.train()
    shape = [1, 1] + [32] * spatial_dims
    channels = tap_channels(net, {"enc1": "conv_0", "enc2": "down_1", "dec1": "upcat_1"}, shape)
    assert channels == {"enc1": 4, "enc2": 6, "dec1": 5}
    assert net.training
    assert not any(m._forward_hooks for m in net.modules())  # the probe's hooks are removed


class Attachable:
    def attach(self, engine):
        pass


class Stateful:
    def attach(self, engine):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_training_state_holds_distillers_and_stateful_handlers():
    net = tiny_unet(2)
    cwd = ChannelWiseDistillation(pairs=["dec1"], student_channels={"dec1": 4}, teacher_channels={"dec1": 6})
    terms = {"cwd": {"loss": cwd, "handlers": [Stateful()]}, "kd": {"loss": nn.Identity(), "handlers": [Attachable()]}}
    opt = torch.optim.SGD(student_parameters(net, terms), lr=0.1)
    state = DistillationMethod(terms).training_state(net, opt)
    assert state["network"] is net and state["optimizer"] is opt
    assert set(state) == {"network", "optimizer", "distillers", "handler_0_Stateful"}
    saved = state["distillers"].state_dict()
    assert any(key.startswith("cwd.") for key in saved)  # the adapter is saved for resume
    assert DistillationMethod().training_state(net, opt) == {"network": net, "optimizer": opt}


def test_count_flops_of_a_convolution_matches_the_hand_count():
    conv = nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False)
    # 2 FLOPs per multiply-add: out positions 8*8, 5 outputs, 3*3*3 taps each
    assert count_flops(conv, [1, 3, 8, 8]) == 2 * 8 * 8 * 5 * 27
    conv3 = nn.Conv3d(2, 4, kernel_size=1, bias=False)
    assert count_flops(conv3, [1, 2, 4, 4, 4]) == 2 * 64 * 4 * 2


class Oracle(nn.Module):
    """Returns logits that reproduce a fixed prediction map."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.cat([1 - self.pred, self.pred], dim=1) * 10.0


def test_evaluate_cases_scores_inside_the_mask_only():
    label = torch.zeros(1, 1, 6, 6)
    label[..., 1:3, 1:3] = 1
    pred = label.clone()
    pred[..., 4:6, 4:6] = 1  # false positives outside the mask only
    mask = torch.ones(1, 1, 6, 6)
    mask[..., 4:, :] = 0
    batch = {"image": torch.zeros(1, 1, 6, 6), "label": label, "fov": mask}
    rows, kept = evaluate_cases(Oracle(pred), [batch], mask_key="fov", keep_predictions=1)
    assert rows[0]["dice"] == pytest.approx(1.0)
    unmasked, _ = evaluate_cases(Oracle(pred), [batch])
    assert unmasked[0]["dice"] == pytest.approx(2 * 4 / (8 + 4))
    assert kept[0].shape == (6, 6) and kept[0].sum() == 8


def test_mean_over_cases_leaves_out_undefined_values():
    rows = [{"dice": 0.5, "hd95": float("nan")}, {"dice": 1.0, "hd95": 4.0}]
    assert mean_over_cases(rows) == {"dice": 0.75, "hd95": 4.0}


def test_summarise_is_mean_and_sample_std_over_finite_values():
    mean, std = summarise([0.5, 0.7, float("nan")])
    assert mean == pytest.approx(0.6) and std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summarise([0.3]) == (0.3, 0.0)
    assert all(np.isnan(summarise([])))


def test_error_overlay_colours_tp_fp_fn():
    label = np.array([[1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 1], [0, 0, 0]])
    rgb = error_overlay(np.zeros((2, 3)), label, pred)
    assert tuple(rgb[0, 0]) == (1.0, 1.0, 1.0)  # true positive
    assert tuple(rgb[0, 2]) == pytest.approx((1.0, 0.2, 0.2))  # false positive
    assert tuple(rgb[0, 1]) == pytest.approx((0.2, 0.5, 1.0))  # false negative
    assert tuple(rgb[1, 1]) == (0.0, 0.0, 0.0)
