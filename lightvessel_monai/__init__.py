"""LightVessel-MONAI: knowledge distillation of lightweight vessel and organ segmentation networks.

Importing the package changes no global state. The one-line error handler for ``python -m monai.bundle run`` is
installed by the bundle configs' first ``initialize`` step (:func:`lightvessel_monai.errors.install_excepthook`);
the package's own command lines print their errors themselves.
"""

__version__ = "0.1.0"
