"""Networks used by the distillation methods. Teachers and students are plain MONAI networks."""

from torch import nn

from lightvessel_monai.networks.discriminator import SimilarityDiscriminator

__all__ = [
    "SimilarityDiscriminator",
    "count_parameters",
]


def count_parameters(network: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``network`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)
