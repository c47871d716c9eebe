"""The two names ``monailabel.transform.post`` imports; they raise, since no torchvision is installed."""


def make_grid(*args, **kwargs):
    raise RuntimeError("torchvision is not installed in .venv-monailabel (a stand-in from scripts/monailabel_shims)")


def save_image(*args, **kwargs):
    raise RuntimeError("torchvision is not installed in .venv-monailabel (a stand-in from scripts/monailabel_shims)")
