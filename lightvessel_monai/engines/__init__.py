from lightvessel_monai.engines.distillation_trainer import DistillationTrainer

__all__ = ["DistillationTrainer"]
