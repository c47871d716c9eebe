"""DICOM cine runs in, DICOM SEG out: inference on multi-frame X-ray angiography (see ``pipeline``)."""

from lightvessel_monai.cine.inputs import InferenceInputs, split_inputs
from lightvessel_monai.cine.pipeline import CineInference, whole_frame_inferer

__all__ = ["CineInference", "InferenceInputs", "split_inputs", "whole_frame_inferer"]
