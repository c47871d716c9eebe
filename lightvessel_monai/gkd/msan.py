"""Model-Specific Alignment Networks (MSAN) of GKD (Qi et al., IEEE JBHI 2024, arXiv 2207.12995).

An MSAN is a *header* over one model's bottleneck: an autoencoder that squeezes every channel's spatial map to one
scalar (the model's *semantic vector*) and expands the vector back to a bottleneck map. The reconstructed map is fed
through the model's own, unmodified decoder by :func:`bottleneck_swap`, a forward hook on the bottleneck module
found through a declared tap path. One header serves the teacher (TAN), one the student (SAN); a pre-trained
semantic autoencoder over the annotations (P-SAE, :class:`LabelSemanticAutoEncoder`) gives both a domain-free target
for their semantic vectors.

Shapes: bottleneck ``(B, C, h, w)`` in 2D or ``(B, C, d, h, w)`` in 3D -> semantic vector ``(B, D)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import SkipConnection
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from lightvessel_monai.errors import ConfigKeyError

__all__ = ["SemanticHeader", "LabelSemanticAutoEncoder", "bottleneck_path", "bottleneck_swap", "bottleneck_size"]


class SemanticHeader(nn.Module):
    """The MSAN header: bottleneck map <-> semantic vector.

    Encoder (as the authors' public header): every channel's flattened map ``(h*w)`` goes through
    ``Linear(h*w -> hidden), GELU, Linear(hidden -> 1)``, shared by all channels, giving ``(B, C)``. The mirrored
    decoder is ``Linear(1 -> hidden), GELU, Linear(hidden -> h*w)`` per channel.

    Choice (not in the public code): when ``semantic_dim`` differs from ``in_channels``, a linear map
    ``C -> semantic_dim`` (and back) follows the per-channel encoder, so that a teacher and a student of different
    bottleneck widths share one semantic space; the header exchange of DICD needs it. With equal widths it is the
    identity, as in the public headers.

    Choice: a bottleneck of another spatial size than ``spatial_size`` (a validation image larger than the training
    patch) is average-pooled to ``spatial_size`` before encoding, and a decoded map is interpolated to the size asked.

    Args:
        spatial_dims: 2 or 3.
        in_channels: bottleneck channels ``C``.
        spatial_size: bottleneck size at the training patch, e.g. ``(8, 8)`` for a 128 x 128 patch and 4 poolings.
        semantic_dim: length ``D`` of the semantic vector (default ``in_channels``).
        hidden: width of the per-channel MLPs (64 in the public code).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        spatial_size: Sequence[int],
        semantic_dim: int | None = None,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3) or len(spatial_size) != spatial_dims:
            raise ConfigKeyError(
                f"SemanticHeader: spatial_size must have spatial_dims (2 or 3) entries, got {list(spatial_size)} "
                f"for spatial_dims={spatial_dims}"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = int(in_channels)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.semantic_dim = int(semantic_dim or in_channels)
        n = math.prod(self.spatial_size)
        self.squeeze = nn.Sequential(nn.Linear(n, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.expand = nn.Sequential(nn.Linear(1, hidden), nn.GELU(), nn.Linear(hidden, n))
        same = self.semantic_dim == self.in_channels
        self.to_semantic = nn.Identity() if same else nn.Linear(self.in_channels, self.semantic_dim)
        self.from_semantic = nn.Identity() if same else nn.Linear(self.semantic_dim, self.in_channels)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, D)``."""
        if features.shape[1] != self.in_channels or features.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"SemanticHeader expects (B, {self.in_channels}, *{self.spatial_size}), got {tuple(features.shape)}"
            )
        if tuple(features.shape[2:]) != self.spatial_size:
            pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
            features = pool(features, self.spatial_size)
        vector = self.squeeze(features.flatten(2).float()).squeeze(-1)
        return self.to_semantic(vector)

    def decode(self, vector: torch.Tensor, spatial_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, D) -> (B, C, *spatial_size)`` (default: the header's ``spatial_size``)."""
        channels = self.from_semantic(vector)
        maps = self.expand(channels.unsqueeze(-1)).view(vector.shape[0], self.in_channels, *self.spatial_size)
        size = tuple(int(s) for s in (spatial_size or self.spatial_size))
        if size != self.spatial_size:
            maps = F.interpolate(maps, size=size, mode="bilinear" if self.spatial_dims == 2 else "trilinear")
        return maps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstruct a bottleneck map through the semantic vector (same shape as ``features``)."""
        return self.decode(self.encode(features), features.shape[2:])


class LabelSemanticAutoEncoder(nn.Module):
    """P-SAE: a semantic autoencoder over annotations, pre-trained to reconstruct one-hot labels.

    Strided MONAI ``Convolution`` blocks bring a ``(B, K, *patch)`` one-hot label to a ``(B, channels[-1], *grid)``
    map, a :class:`SemanticHeader` squeezes it to ``(B, semantic_dim)``, and transposed convolutions bring the
    vector back to class logits ``(B, K, *patch)``. Its semantic vector of a label carries no image intensities,
    so it is a domain-free target for the MSAN headers (choice: the paper names a pre-trained semantic autoencoder
    as the regulariser without its layers; this is the smallest convolutional one that fits the header).

    Args:
        spatial_dims: 2 or 3.
        num_classes: label classes ``K``.
        patch_size: training patch, each entry divisible by ``2 ** len(channels)``.
        semantic_dim: semantic vector length ``D`` (the headers' ``semantic_dim``).
        channels: widths of the strided convolutions.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        patch_size: Sequence[int],
        semantic_dim: int,
        channels: Sequence[int] = (8, 16, 32, 32),
    ) -> None:
        super().__init__()
        factor = 2 ** len(channels)
        if any(int(s) % factor for s in patch_size):
            raise ConfigKeyError(f"LabelSemanticAutoEncoder: patch_size {list(patch_size)} must divide by {factor}")
        self.num_classes = int(num_classes)
        widths = [int(num_classes), *[int(c) for c in channels]]
        self.encoder = nn.Sequential(
            *[Convolution(spatial_dims, a, b, strides=2, kernel_size=3) for a, b in pairwise(widths)]
        )
        grid = [int(s) // factor for s in patch_size]
        self.header = SemanticHeader(spatial_dims, widths[-1], grid, semantic_dim)
        ups = list(reversed(widths[1:])) + [widths[1]]
        layers = [
            Convolution(spatial_dims, a, b, strides=2, kernel_size=3, is_transposed=True) for a, b in pairwise(ups)
        ]
        layers.append(Convolution(spatial_dims, ups[-1], num_classes, kernel_size=1, conv_only=True))
        self.decoder = nn.Sequential(*layers)

    def encode(self, label: torch.Tensor) -> torch.Tensor:
        """One-hot ``(B, K, *patch)`` -> semantic vector ``(B, D)``."""
        return self.header.encode(self.encoder(label.float()))

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        """One-hot label -> reconstructed class logits of the same shape."""
        grid = self.encoder(label.float())
        return self.decoder(self.header.decode(self.header.encode(grid), grid.shape[2:]))


def bottleneck_path(network: nn.Module) -> str:
    """The module path of the bottleneck of a MONAI ``BasicUNet`` (``down_4``) or ``UNet`` (its bottom block).

    The path is used as a declared tap (``student_taps``/``teacher_taps``); for another network, declare it in the
    config (``gkd_student_bottleneck`` / ``gkd_teacher_bottleneck``).
    """
    if isinstance(network, BasicUNet):
        return "down_4"
    if isinstance(network, UNet):
        path = "model"
        module = network.model
        while isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[1], SkipConnection):
            path, module = f"{path}.1.submodule", module[1].submodule
        return path
    raise ConfigKeyError(
        f"no known bottleneck for {type(network).__name__}: declare its module path in gkd_student_bottleneck / "
        "gkd_teacher_bottleneck"
    )


def bottleneck_size(network: nn.Module, path: str, input_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """``(channels, spatial size)`` of the module at ``path`` for an input of ``input_shape`` ``[1, C_in, *S]``,
    found with one forward pass of zeros in eval mode (the network's mode is restored)."""
    shapes: list[torch.Size] = []
    handle = network.get_submodule(path).register_forward_hook(lambda _m, _i, output: shapes.append(output.shape))
    was_training = network.training
    try:
        param = next(network.parameters(), None)
        network.eval()
        with torch.no_grad():
            network(torch.zeros(*[int(s) for s in input_shape], device=param.device if param is not None else None))
    finally:
        handle.remove()
        network.train(was_training)
    return int(shapes[0][1]), tuple(int(s) for s in shapes[0][2:])


@contextlib.contextmanager
def bottleneck_swap(network: nn.Module, path: str, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, the output of ``network``'s module at ``path`` is replaced by ``replace(output)``.

    The network is not edited: a forward hook returns the replacement, so the rest of the forward pass (the
    decoder and its skip connections from the encoder) runs on the reconstructed bottleneck. Hooks registered
    earlier (feature taps) still see the original output.
    """
    module = network.get_submodule(path)
    handle = module.register_forward_hook(lambda _m, _i, output: replace(output))
    try:
        yield
    finally:
        handle.remove()
