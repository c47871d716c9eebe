"""Exports of a trained student: TorchScript and ONNX, each checked against the PyTorch network it came from."""

from lightvessel_monai.export.formats import export_onnx, export_torchscript, max_abs_difference, onnx_predict

__all__ = ["export_onnx", "export_torchscript", "max_abs_difference", "onnx_predict"]
