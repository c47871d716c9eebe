import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_unet(spatial_dims: int, features=(4, 4, 8, 8, 16, 4), out_channels: int = 2):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels, features=features)


def python() -> str:
    return sys.executable


os.environ.setdefault("PYTHONHASHSEED", "0")
