from lightvessel_monai.handlers.adversarial import AdversarialUpdateHandler
from lightvessel_monai.handlers.divergence import StopOnLossGrowth, StopOnZeroDice
from lightvessel_monai.handlers.final_weights import FinalWeightsSaver
from lightvessel_monai.handlers.finite import StopOnNonFiniteLoss
from lightvessel_monai.handlers.overlays import ValidationOverlayHandler
from lightvessel_monai.handlers.progress import ProgressBarHandler
from lightvessel_monai.handlers.rank0 import WRITER_HANDLERS, rank0_handlers
from lightvessel_monai.handlers.resume import BestCheckpointState, ResumeCheckpoint
from lightvessel_monai.handlers.self_teacher import SelfTeacherHandler, make_self_teacher
from lightvessel_monai.handlers.validation import FinalValidationHandler
from lightvessel_monai.reporting.learning_curves import LearningCurveHandler

__all__ = [
    "AdversarialUpdateHandler",
    "BestCheckpointState",
    "FinalValidationHandler",
    "FinalWeightsSaver",
    "LearningCurveHandler",
    "ProgressBarHandler",
    "ResumeCheckpoint",
    "SelfTeacherHandler",
    "StopOnLossGrowth",
    "StopOnNonFiniteLoss",
    "StopOnZeroDice",
    "ValidationOverlayHandler",
    "WRITER_HANDLERS",
    "make_self_teacher",
    "rank0_handlers",
]
