"""Distillation losses: one module per method family, all built on :class:`~lightvessel_monai.losses.base.Distiller`."""

from lightvessel_monai.losses.adversarial import discriminator_loss, generator_loss, gradient_penalty
from lightvessel_monai.losses.asd import AdversarialSimilarityDistillation, correlation_map
from lightvessel_monai.losses.at import AttentionTransfer, attention_transfer_loss
from lightvessel_monai.losses.base import DistillationInputs, Distiller
from lightvessel_monai.losses.cwd import ChannelWiseDistillation, channel_wise_divergence
from lightvessel_monai.losses.dskd import (
    DeepDistributionLoss,
    PixelwiseSelfDistillation,
    SideHeads,
    patch_distribution,
    patch_distribution_kl,
)
from lightvessel_monai.losses.emkd import (
    ImportanceMapDistillation,
    PredictionMapDistillation,
    RegionAffinityDistillation,
    region_affinity,
    region_affinity_loss,
)
from lightvessel_monai.losses.fsd import FeatureSimilarityDistillation, fsd_pair_loss, naive_similarity_loss
from lightvessel_monai.losses.kd import KnowledgeDistillation
from lightvessel_monai.losses.method import DistillationMethod, student_parameters
from lightvessel_monai.losses.pseudo_label import PseudoLabelLoss
from lightvessel_monai.losses.skd import HolisticDistillation, PairwiseDistillation
from lightvessel_monai.losses.terms import DistillationTerm, parse_terms

__all__ = [
    "AdversarialSimilarityDistillation",
    "AttentionTransfer",
    "ChannelWiseDistillation",
    "DeepDistributionLoss",
    "DistillationInputs",
    "DistillationMethod",
    "DistillationTerm",
    "Distiller",
    "FeatureSimilarityDistillation",
    "HolisticDistillation",
    "ImportanceMapDistillation",
    "KnowledgeDistillation",
    "PairwiseDistillation",
    "PixelwiseSelfDistillation",
    "PseudoLabelLoss",
    "PredictionMapDistillation",
    "RegionAffinityDistillation",
    "SideHeads",
    "attention_transfer_loss",
    "channel_wise_divergence",
    "correlation_map",
    "discriminator_loss",
    "fsd_pair_loss",
    "generator_loss",
    "gradient_penalty",
    "naive_similarity_loss",
    "parse_terms",
    "patch_distribution",
    "patch_distribution_kl",
    "region_affinity",
    "region_affinity_loss",
    "student_parameters",
]
