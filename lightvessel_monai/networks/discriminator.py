"""Discriminator for adversarial similarity distillation (dimension-agnostic, spectrally normalised)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["SimilarityDiscriminator"]


class SimilarityDiscriminator(nn.Module):
    """Strided-convolution critic that maps a correlation map to one score per sample.

    Spectral normalisation on every layer keeps the critic approximately 1-Lipschitz, which stabilises
    both WGAN-GP and hinge training. The global average pool makes it independent of the input size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the correlation map (``K`` for ``label * prob``, ``2K`` for concatenation).
        channels: output channels of the strided convolutions.
        strides: stride of each convolution (one value or one per layer).
        kernel_size: convolution kernel size.
        negative_slope: LeakyReLU slope.
        use_spectral_norm: wrap each convolution in ``torch.nn.utils.parametrizations.spectral_norm``.

    Shapes:
        input ``(B, in_channels, H, W)`` in 2D or ``(B, in_channels, D, H, W)`` in 3D; output ``(B, 1)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: int | Sequence[int] = 2,
        kernel_size: int = 4,
        negative_slope: float = 0.2,
        use_spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not channels:
            raise ValueError("channels must name at least one convolution")
        strides = [strides] * len(channels) if isinstance(strides, int) else list(strides)
        if len(strides) != len(channels):
            raise ValueError(f"strides has {len(strides)} entries for {len(channels)} channels")
        conv_type = Conv[Conv.CONV, spatial_dims]
        norm = spectral_norm if use_spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        prev = in_channels
        for out, stride in zip(channels, strides, strict=True):
            padding = (kernel_size - 1) // 2
            layers += [
                norm(conv_type(prev, out, kernel_size, stride=stride, padding=padding)),
                nn.LeakyReLU(negative_slope),
            ]
            prev = out
        self.features = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = norm(nn.Linear(prev, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
