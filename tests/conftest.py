import math
import os
import sys
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (the README's ``-n 2``) each worker gets one core: one thread per worker and per subprocess it
# starts, so the two workers do not oversubscribe the machine. A test that needs several threads sets them itself.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_unet(spatial_dims: int, features=(4, 4, 8, 8, 16, 4), out_channels: int = 2):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels, features=features)


def config_parser(*configs, **overrides):
    """A ``ConfigParser`` of ``configs`` (merged in order) with ``overrides`` set on top."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def leading_number(path) -> int:
    """The number a data file's name starts with (``21_training.tif`` -> 21, ``7_gt.png`` -> 7)."""
    import re

    return int(re.match(r"^(\d+)", Path(path).name).group(1))


def python() -> str:
    return sys.executable


os.environ.setdefault("PYTHONHASHSEED", "0")


KL_HAND = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([0.75, 0.25] || [0.5, 0.5]), by hand


def distillation_inputs(student_pred=None, teacher_pred=None, sf=None, tf=None, image=None, label=None):
    """A DistillationInputs around a student prediction (default ``(1, 2, 2, 2)`` zeros) with zero image/label."""
    from lightvessel_monai.losses import DistillationInputs

    pred = student_pred if student_pred is not None else torch.zeros(1, 2, 2, 2)
    return DistillationInputs(
        image=image if image is not None else torch.zeros(pred.shape[0], 1, *pred.shape[2:]),
        label=label if label is not None else torch.zeros(pred.shape[0], 1, *pred.shape[2:]),
        student_pred=pred,
        teacher_pred=teacher_pred,
        student_features=sf or {},
        teacher_features=tf or {},
    )


def leaf(*shape: int):
    """A random tensor that requires grad (a stand-in for a network feature)."""
    return torch.randn(*shape).requires_grad_(True)
