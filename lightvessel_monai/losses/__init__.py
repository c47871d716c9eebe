from lightvessel_monai.losses.adversarial import discriminator_loss, generator_loss, gradient_penalty
from lightvessel_monai.losses.asd import AdversarialSimilarityDistillation, correlation_map
from lightvessel_monai.losses.base import DistillationInputs, Distiller, student_parameters
from lightvessel_monai.losses.fsd import FeatureSimilarityDistillation, fsd_pair_loss, naive_similarity_loss

__all__ = [
    "AdversarialSimilarityDistillation",
    "DistillationInputs",
    "Distiller",
    "FeatureSimilarityDistillation",
    "correlation_map",
    "discriminator_loss",
    "fsd_pair_loss",
    "generator_loss",
    "gradient_penalty",
    "naive_similarity_loss",
    "student_parameters",
]
