"""Ignite handler that keeps a self-teacher: an EMA or a previous-epoch snapshot of the student (DSKD's teacher).

In DSKD (M. Lin, arXiv 2509.03173, 2025) the student distils from an earlier state of itself rather than from a
separate network. :class:`SelfTeacherHandler` maintains that state outside back-propagation;
:class:`lightvessel_monai.losses.PixelwiseSelfDistillation` reads it.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events
from torch import nn

from lightvessel_monai.errors import ConfigKeyError

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SelfTeacherHandler", "make_self_teacher", "MODES"]

logger = logging.getLogger(__name__)

MODES = ("ema", "snapshot")


def make_self_teacher(network: nn.Module) -> nn.Module:
    """A frozen copy of ``network`` to serve as its self-teacher: eval mode, ``requires_grad=False``.

    The copy keeps the network's hooks; a :class:`lightvessel_monai.taps.FeatureTaps` hook copies itself as an
    inert hook (see its ``__deepcopy__``), so the self-teacher's forward never overwrites the student's tapped
    features.
    """
    teacher = copy.deepcopy(network)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class SelfTeacherHandler:
    """Keep ``self_teacher`` an earlier state of ``network`` during training.

    * ``mode="ema"``: after every iteration (ignite ``ITERATION_COMPLETED``, i.e. after the optimiser step)
      ``theta_t <- decay * theta_t + (1 - decay) * theta_s`` for every parameter (the mean teacher of Tarvainen &
      Valpola, 2017); buffers (e.g. BatchNorm statistics) are copied from the student.
    * ``mode="snapshot"``: at every ``EPOCH_COMPLETED`` the self-teacher becomes a copy of the student, so during
      epoch ``e`` it is the student as it was at the end of epoch ``e - 1``.

    At ``STARTED`` the self-teacher is initialised from the student, unless the run resumes (the engine is past
    iteration 0, or :meth:`load_state_dict` was called). The self-teacher stays in eval mode with
    ``requires_grad=False``; nothing but this handler writes its weights.

    ``state_dict`` holds the self-teacher's weights and the update count, so that the bundle's resume checkpoint
    (which saves every method handler with a ``state_dict``) continues the same self-teacher. Method handlers are
    attached before :class:`~lightvessel_monai.handlers.ResumeCheckpoint`, so the end-of-epoch snapshot is taken
    before the epoch's checkpoint is written, and the initial copy at ``STARTED`` is overwritten by a resumed state.

    Args:
        network: the student.
        self_teacher: a network of the same architecture (e.g. :func:`make_self_teacher` of the student).
        mode: ``"ema"`` or ``"snapshot"``.
        decay: EMA decay in ``[0, 1)`` (``"ema"`` only); ``0`` copies the student after every step.
        initialize: copy the student into the self-teacher at ``STARTED`` of a fresh run.
    """

    def __init__(
        self,
        network: nn.Module,
        self_teacher: nn.Module,
        mode: str = "ema",
        decay: float = 0.99,
        initialize: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"SelfTeacherHandler mode must be one of {', '.join(MODES)}, got '{mode}'")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"SelfTeacherHandler decay must be in [0, 1), got {decay}")
        if self_teacher is network:
            raise ValueError("SelfTeacherHandler: self_teacher must be a copy of the network, not the network itself")
        student_state, teacher_state = network.state_dict(), self_teacher.state_dict()
        differ = [
            k
            for k in set(student_state) | set(teacher_state)
            if k not in student_state or k not in teacher_state or student_state[k].shape != teacher_state[k].shape
        ]
        if differ:
            raise ValueError(
                f"SelfTeacherHandler: self_teacher is not a copy of the network ({len(differ)} parameters/buffers "
                f"differ, e.g. {', '.join(sorted(differ)[:3])})"
            )
        self.network = network
        self.self_teacher = self_teacher
        self.mode = mode
        self.decay = float(decay)
        self.initialize = initialize
        self.num_updates = 0
        self._restored = False
        self._attached = False
        self._freeze()

    def _freeze(self) -> None:
        self.self_teacher.eval()
        self.self_teacher.requires_grad_(False)

    def attach(self, engine: Engine) -> None:
        if self._attached:
            raise ConfigKeyError(f"{type(self).__name__} is attached twice: list it once, in its term's 'handlers'")
        self._attached = True
        param = next(self.network.parameters(), None)
        if param is not None:
            self.self_teacher.to(param.device)
        engine.add_event_handler(Events.STARTED, self.started)
        if self.mode == "ema":
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.ema_update)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.snapshot)

    def started(self, engine: Engine | None = None) -> None:
        """Initialise the self-teacher from the student, unless resuming."""
        resuming = self._restored or (engine is not None and engine.state.iteration > 0)
        if self.initialize and not resuming:
            self.copy_student()
        self._freeze()

    @torch.no_grad()
    def copy_student(self) -> None:
        """Self-teacher <- student (parameters and buffers)."""
        self.self_teacher.load_state_dict(self.network.state_dict())

    @torch.no_grad()
    def _copy_buffers(self) -> None:
        teacher = dict(self.self_teacher.named_buffers())
        for name, b in self.network.named_buffers():
            teacher[name].copy_(b)

    @torch.no_grad()
    def ema_update(self, engine: Engine | None = None) -> None:
        """One EMA step of the parameters; buffers are copied.

        Why not ignite's ``EMAHandler`` (checked against ignite 0.5): it builds its own copy of the model, which
        the PSDL term would have to reach through the handler instead of being given it in config; it has no
        ``state_dict``, so a resumed run would restart its average; and it updates with ``mul_(1 - m).add_(s, m)``
        where this uses ``lerp_``, which rounds differently, so every stored DSKD result would change for the same
        seed. The update is one line either way.
        """
        teacher = dict(self.self_teacher.named_parameters())
        for name, p in self.network.named_parameters():
            t = teacher[name]
            # lerp: t + (1 - decay) * (s - t) = decay * t + (1 - decay) * s
            t.lerp_(p.detach().to(t.dtype), 1.0 - self.decay)
        self._copy_buffers()
        self.num_updates += 1

    def snapshot(self, engine: Engine | None = None) -> None:
        """Self-teacher <- student: the state at the end of this epoch teaches the next one."""
        self.copy_student()
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"self_teacher": self.self_teacher.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.self_teacher.load_state_dict(state["self_teacher"])
        self.num_updates = int(state.get("num_updates", 0))
        self._restored = True
        self._freeze()
