"""GAN objectives shared by the adversarial distillers (ASD here, holistic SKD later).

Scores are critic outputs of shape ``(B, 1)``. ``kind`` is one of:

- ``"wgan-gp"``: Wasserstein critic, ``L_D = E[D(fake)] - E[D(real)] + lambda * GP`` and ``L_G = -E[D(fake)]``
  (Gulrajani et al., 2017);
- ``"hinge"``: ``L_D = E[relu(1 - D(real))] + E[relu(1 + D(fake))]`` and ``L_G = -E[D(fake)]``;
- ``"lsgan"``: ``L_D = 0.5 E[(D(real) - 1)^2] + 0.5 E[D(fake)^2]`` and ``L_G = 0.5 E[(D(fake) - 1)^2]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GAN_KINDS", "generator_loss", "discriminator_loss", "gradient_penalty", "frozen"]

GAN_KINDS = ("wgan-gp", "hinge", "lsgan")


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ValueError(f"adversarial loss kind must be one of {', '.join(GAN_KINDS)}, got '{kind}'")


def generator_loss(fake_scores: torch.Tensor, kind: str = "wgan-gp") -> torch.Tensor:
    """Loss of the generator (the student) given the critic's scores of its maps."""
    _check_kind(kind)
    if kind == "lsgan":
        return 0.5 * (fake_scores - 1).pow(2).mean()
    return -fake_scores.mean()


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str = "wgan-gp") -> torch.Tensor:
    """Loss of the critic without the gradient penalty (add :func:`gradient_penalty` for ``wgan-gp``)."""
    _check_kind(kind)
    if kind == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    if kind == "lsgan":
        return 0.5 * (real_scores - 1).pow(2).mean() + 0.5 * fake_scores.pow(2).mean()
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x)||_2 - 1)^2]`` on random interpolates ``x = a*real + (1-a)*fake``.

    Args:
        critic: the discriminator.
        real, fake: critic inputs ``(B, C, H, W)`` or ``(B, C, D, H, W)``, detached.
        alpha: interpolation weights ``(B, 1, 1, 1[, 1])``; uniform random when omitted.
        scale: the AMP grad-scaler's scale when the scores are scaled (the gradient is divided by it,
            as in PyTorch's AMP gradient-penalty recipe); 1 otherwise.
    """
    if alpha is None:
        alpha = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum() * scale, mixed, create_graph=True)
    grad = grad.float() / scale
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Use ``module`` as a fixed function: no parameter gradients (they still flow *through* it) and eval mode.

    Eval mode matters for spectral norm: in training mode every forward pass runs a power iteration
    that updates the ``_u``/``_v`` buffers, so the student's step would otherwise change the critic.
    """
    flags = [p.requires_grad for p in module.parameters()]
    training = module.training
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        module.train(training)
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
