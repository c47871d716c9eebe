"""TorchScript and ONNX exports of the students, 2D and 3D: outputs against the PyTorch network, dynamic spatial axes,
and a wrong file never left behind."""

import pytest
import torch
from monai.networks.nets import UNet

from lightvessel_monai.export import export_onnx, export_torchscript, onnx_predict
from lightvessel_monai.export.formats import ExportMismatchError, example_input, max_abs_difference

# the students of the XCA/DRIVE overlays (2D) and of the 3D overlays, at their real widths
STUDENTS = {
    2: (lambda: UNet(2, 1, 2, (4, 8, 16, 32), (2, 2, 2), num_res_units=2), (64, 64), (96, 80)),
    3: (lambda: UNet(3, 1, 2, (12, 24, 48, 96), (2, 2, 2), num_res_units=1), (32, 32, 16), (48, 32, 24)),
}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_onnx_matches_pytorch_at_the_export_size_and_at_another(spatial_dims, tmp_path):
    build, shape, other = STUDENTS[spatial_dims]
    torch.manual_seed(0)
    network = build().eval()
    path = tmp_path / "model.onnx"
    diff = export_onnx(network, path, example_input(1, shape))
    assert diff <= 1e-4 and path.is_file() and not (tmp_path / "model.onnx.tmp").exists()
    x = example_input(1, other)  # dynamic spatial axes: a size the export never saw, and a batch of 2
    x = torch.cat([x, x.flip(-1)])
    with torch.no_grad():
        expected = network(x)
    actual = onnx_predict(path, x)
    assert actual.shape == tuple(expected.shape)
    assert max_abs_difference(expected, actual) <= 1e-4


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_round_trip(spatial_dims, tmp_path):
    build, shape, other = STUDENTS[spatial_dims]
    torch.manual_seed(0)
    network = build().eval()
    path = tmp_path / "model.ts"
    assert export_torchscript(network, path, example_input(1, shape)) <= 1e-5
    loaded = torch.jit.load(str(path))
    x = example_input(1, other)
    with torch.no_grad():
        assert max_abs_difference(network(x), loaded(x)) <= 1e-5


class Drifting(torch.nn.Module):
    """A network whose exported graph is not what it computes in eager mode: it adds 1 while being traced."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.conv(x) + 1.0 if torch.jit.is_tracing() else self.conv(x)


def test_an_export_that_does_not_reproduce_the_network_is_removed(tmp_path):
    path = tmp_path / "drift.onnx"
    with pytest.raises(ExportMismatchError, match="differs from the network by 1 ") as err:
        export_onnx(Drifting(), path, example_input(1, (8, 8)))
    assert not path.exists() and "\n" not in str(err.value)


def test_max_abs_difference_by_hand():
    a = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    b = torch.tensor([[1.0, -2.5], [0.25, 3.0]])
    assert max_abs_difference(a, b) == 0.5
    with pytest.raises(ExportMismatchError, match="shape"):
        max_abs_difference(a, b[:1])
