"""A stand-in for torchvision inside .venv-monailabel (scripts/setup_monailabel.sh), not the real package.

``monailabel.transform.post`` imports ``torchvision.utils.make_grid`` and ``save_image`` at module level, and every
bundle inference task imports that module. PyPI's torchvision is built against CUDA torch and does not import beside
the CPU torch 2.13.0 used here ("operator torchvision::nms does not exist"), so the setup script puts this folder at
the end of the venv's ``sys.path`` (a ``.pth`` file): a real torchvision installed later wins. Nothing that the
monaibundle app runs for this bundle calls torchvision; the functions below raise if something does.
"""

__version__ = "0.0.0+lightvessel.shim"
