"""Networks used by the distillation methods. Teachers and students are plain MONAI networks."""

from torch import nn

from lightvessel_monai.networks.discriminator import SimilarityDiscriminator
from lightvessel_monai.networks.msan import (
    LabelSemanticAutoEncoder,
    SemanticHeader,
    bottleneck_path,
    bottleneck_size,
    bottleneck_swap,
)

__all__ = [
    "LabelSemanticAutoEncoder",
    "SemanticHeader",
    "SimilarityDiscriminator",
    "bottleneck_path",
    "bottleneck_size",
    "bottleneck_swap",
    "count_parameters",
]


def count_parameters(network: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``network`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)
