from lightvessel_monai.engines.distillation_trainer import DistillationTrainer, stand_in_label
from lightvessel_monai.engines.mixed_batch import MixedBatch, cutmix, mixup

__all__ = ["DistillationTrainer", "MixedBatch", "cutmix", "mixup", "stand_in_label"]
