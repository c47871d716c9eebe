"""LightVessel-MONAI: knowledge distillation of lightweight vessel and organ segmentation networks."""

from lightvessel_monai.errors import install_excepthook

__version__ = "0.1.0"

install_excepthook()
