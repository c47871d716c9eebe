from lightvessel_monai.handlers.adversarial import AdversarialUpdateHandler
from lightvessel_monai.handlers.group import HandlerGroup
from lightvessel_monai.handlers.progress import ProgressBarHandler
from lightvessel_monai.handlers.resume import ResumeCheckpoint

__all__ = ["AdversarialUpdateHandler", "HandlerGroup", "ProgressBarHandler", "ResumeCheckpoint"]
