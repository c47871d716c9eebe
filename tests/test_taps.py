import pytest
import torch
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.taps import FeatureTaps


class TupleBlock(nn.Module):
    def forward(self, x):
        return (x * 2, x)


def make_net(spatial_dims: int) -> nn.Sequential:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return nn.Sequential(
        conv(1, 3, 3, padding=1),
        nn.Sequential(nn.ReLU(), conv(3, 5, 3, padding=1)),
        TupleBlock(),
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_taps_return_module_outputs(spatial_dims):
    net = make_net(spatial_dims)
    taps = FeatureTaps(net, {"first": "0", "inner": "1.1", "tuple": "2"})
    x = torch.randn(2, 1, *([6] * spatial_dims))
    with torch.no_grad():
        first = net[0](x)
        inner = net[1](first)
    out = net(x)  # after the reference calls, which the hooks also see
    torch.testing.assert_close(taps.features["first"], first)
    torch.testing.assert_close(taps.features["inner"], inner)
    # a tuple output is tapped as its first tensor
    torch.testing.assert_close(taps.features["tuple"], out[0])
    assert taps.features["inner"].shape == (2, 5, *([6] * spatial_dims))
    # features keep the autograd graph, so a loss on them reaches the network
    taps.features["inner"].sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_taps_follow_the_latest_forward_and_can_be_removed():
    net = make_net(2)
    taps = FeatureTaps(net, {"first": "0"})
    x1, x2 = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    net(x1)
    net(x2)
    torch.testing.assert_close(taps.features["first"], net[0](x2))
    taps.clear()
    assert taps.features == {}
    taps.remove()
    net(x1)
    assert taps.features == {}


def test_invalid_path_lists_valid_paths():
    from monai.networks.nets import BasicUNet

    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    with pytest.raises(ConfigKeyError) as err:
        FeatureTaps(net, {"enc1": "conv_9"})
    message = str(err.value)
    assert "'conv_9'" in message and "conv_0" in message and "upcat_1" in message
    assert "\n" not in message
