"""GKD (Qi et al., IEEE JBHI 2024): generalizable cross-domain distillation through semantic vectors.

- ``msan``: the multi-scale semantic autoencoders (the label autoencoder and the semantic headers) and the
  bottleneck helpers that read and exchange a network's bottleneck;
- ``alignment``: Alignment Consistency Training, the preparation stage that trains the TAN and the P-SAE;
- ``losses``: the terms (DCGD ``gkd_intra``/``gkd_inter``, DICD, the online alignment term) and the per-step
  semantic vectors they share;
- ``semantic_distance``: the Fréchet Semantic Distance, as a metric and as a validation handler.

Nothing outside this subpackage imports it: ``configs/methods/gkd.json`` names it.
"""

from lightvessel_monai.gkd.losses import (
    AlignmentConsistencyLoss,
    DomainInvariantCrossDistillation,
    DualContrastiveGraphDistillation,
    GKDSemantics,
    SemanticAlignment,
    contrastive_graph_loss,
    graph_edges,
)
from lightvessel_monai.gkd.msan import (
    LabelSemanticAutoEncoder,
    SemanticHeader,
    bottleneck_path,
    bottleneck_size,
    bottleneck_swap,
)
from lightvessel_monai.gkd.semantic_distance import FrechetSemanticDistance, SemanticDistanceHandler, frechet_distance

__all__ = [
    "AlignmentConsistencyLoss",
    "DomainInvariantCrossDistillation",
    "DualContrastiveGraphDistillation",
    "FrechetSemanticDistance",
    "GKDSemantics",
    "LabelSemanticAutoEncoder",
    "SemanticAlignment",
    "SemanticDistanceHandler",
    "SemanticHeader",
    "bottleneck_path",
    "bottleneck_size",
    "bottleneck_swap",
    "contrastive_graph_loss",
    "frechet_distance",
    "graph_edges",
]
