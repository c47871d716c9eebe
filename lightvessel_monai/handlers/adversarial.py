"""Ignite handler that trains the critic of an adversarial distiller after each student step."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses.asd import AdversarialSimilarityDistillation
from lightvessel_monai.losses.base import DistillationInputs
from lightvessel_monai.pipeline.distributed import average_gradients, broadcast_tensors

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["AdversarialUpdateHandler"]

logger = logging.getLogger(__name__)


class AdversarialUpdateHandler:
    """Critic update of an adversarial distiller (ASD, SKD's holistic term) in a ``DistillationTrainer``.

    List it in the adversarial term's ``handlers``; the :class:`~lightvessel_monai.engines.DistillationTrainer`
    attaches it and, after each student step, calls :meth:`after_step` with the step's detached label and
    teacher/student predictions. It builds the real and fake correlation maps and runs ``d_steps`` optimiser
    steps on the critic. The critic loss is written
    to ``engine.state.output["loss_disc"]`` so StatsHandler and TensorBoard log it with the other terms.

    Args:
        adversarial: the adversarial distiller that owns the critic (ASD).
        optimizer: optimiser over the critic's parameters only.
        d_steps: critic updates per student iteration.
        start_iteration: first trainer iteration (1-based) at which the critic is updated.
        amp: run the critic under ``torch.autocast`` with its own ``GradScaler`` (CUDA only; ignored on CPU).

    ``state_dict`` holds the critic's weights, the optimiser and the scaler, so that the handler can be
    put in a checkpoint's ``save_dict`` and restored on resume.

    Under ``torchrun`` every rank holds a copy of the critic: it starts from rank 0's weights and its gradients are
    averaged over the ranks before each step (:func:`~lightvessel_monai.pipeline.distributed.average_gradients`, DDP's
    operation; DDP itself does not support the gradient penalty's double backward), so the copies stay identical.
    """

    def __init__(
        self,
        adversarial: AdversarialSimilarityDistillation,
        optimizer: torch.optim.Optimizer,
        d_steps: int = 1,
        start_iteration: int = 1,
        amp: bool = False,
    ) -> None:
        if d_steps < 1:
            raise ValueError(f"d_steps must be >= 1, got {d_steps}")
        self.adversarial = adversarial
        self.discriminator = adversarial.discriminator
        self.optimizer = optimizer
        self.d_steps = d_steps
        self.start_iteration = start_iteration
        self.amp = amp
        self.scaler: torch.amp.GradScaler | None = None
        self.last_loss: float | None = None
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if self._engine is not None:
            raise ConfigKeyError(f"{type(self).__name__} is attached twice: list it once, in its term's 'handlers'")
        if self not in getattr(engine, "after_step_handlers", ()):
            raise ConfigKeyError(
                f"{type(self).__name__} belongs in its term's 'handlers' (distillation#<term>#handlers) of a "
                "DistillationTrainer, which hands it each step's predictions; it was attached some other way"
            )
        self._engine = engine
        device = torch.device(engine.state.device) if getattr(engine.state, "device", None) else None
        if device is not None:
            self.discriminator.to(device)
        broadcast_tensors([*self.discriminator.parameters(), *self.discriminator.buffers()])
        use_amp = self.amp and device is not None and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def after_step(self, engine: Engine, inputs: DistillationInputs) -> None:
        """Update the critic on the step's detached label and predictions (called by the trainer)."""
        if engine.state.iteration < self.start_iteration:
            return
        if inputs.teacher_pred is None:
            raise RuntimeError("AdversarialUpdateHandler needs a DistillationTrainer with a teacher")
        real, fake = self.adversarial.critic_inputs(
            inputs.label, inputs.teacher_pred, inputs.student_pred, image=inputs.image
        )
        self.last_loss = self.step(real, fake)
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            item["loss_disc"] = self.last_loss

    def step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """``d_steps`` critic updates on the given maps; returns the last critic loss."""
        self.discriminator.train()
        scaler = self.scaler or torch.amp.GradScaler("cuda", enabled=False)
        device_type = real.device.type
        loss = torch.zeros(())
        for _ in range(self.d_steps):
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type, enabled=scaler.is_enabled()):
                scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                loss = self.adversarial.discriminator_loss(real, fake, gp_scale=scale)
            scaler.scale(loss).backward()
            average_gradients(self.discriminator.parameters())
            scaler.step(self.optimizer)
            scaler.update()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.scaler is not None and self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
