"""DistillationTrainer: a SupervisedTrainer whose loss adds distillation terms from a frozen teacher."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.features import FeatureTaps, check_taps
from lightvessel_monai.losses.base import DistillationInputs
from lightvessel_monai.utils import check_positive_ints, load_state_dict_checked

__all__ = ["DistillationTrainer"]

logger = logging.getLogger(__name__)


class DistillationTrainer(SupervisedTrainer):
    """Train a student with ``loss = seg_loss + sum_k w_k * distiller_k`` from a frozen teacher.

    Everything of :class:`monai.engines.SupervisedTrainer` (AMP, gradient accumulation, handlers,
    ``torch.compile``) is kept: this class only supplies the loss function. For every iteration it runs
    the teacher without gradients on the same inputs (inside the same autocast region), reads the
    feature taps of both networks and evaluates each distiller on a
    :class:`~lightvessel_monai.losses.base.DistillationInputs`.

    ``engine.state.output`` holds, besides the usual ``image``/``label``/``pred``/``loss``, one entry
    ``loss_<name>`` per term (``loss_seg`` and the *unweighted* distiller values). ``engine.state.distill``
    keeps the detached image, label and teacher/student logits of the last iteration for handlers such as
    :class:`~lightvessel_monai.handlers.AdversarialUpdateHandler`.

    Args:
        network: the student.
        loss_function: the segmentation loss ``(pred, label) -> scalar`` (e.g. ``DiceCELoss``).
        teacher: the teacher network, or ``None`` for teacher-free (self-)distillation.
        teacher_checkpoint: state-dict file loaded into the teacher (``weights_only=True``); a checkpoint
            of another architecture is a one-line :class:`~lightvessel_monai.errors.CheckpointMismatchError`.
        teacher_taps, student_taps: ``{tap_name: module_path}`` read with forward hooks.
        distillers: ``{name: Distiller}``.
        distiller_weights: ``{name: weight}``; a missing weight is 1.
        term_grad_interval: every this many iterations, measure how hard each term pulls on the student: the L2
            norm of the gradient of ``w_k * term_k`` (and of the segmentation loss) with respect to the student's
            parameters, one ``torch.autograd.grad`` per term on the retained graph. The values go to
            ``engine.state.output["grad_<name>"]`` and to :attr:`term_grad_norms` (one dict per measured
            iteration). ``0`` (default) measures nothing and costs nothing. The measurement reads gradients
            without touching ``.grad``, the optimiser or any random state, so training is unchanged.
        other args: as :class:`monai.engines.SupervisedTrainer` (``decollate`` defaults to ``False`` here,
            because the loss terms are logged from the batch-level output).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        teacher: nn.Module | None = None,
        teacher_checkpoint: str | None = None,
        teacher_taps: Mapping[str, str] | None = None,
        student_taps: Mapping[str, str] | None = None,
        distillers: Mapping[str, nn.Module] | None = None,
        distiller_weights: Mapping[str, float] | None = None,
        decollate: bool = False,
        train_handlers: Sequence | None = None,
        term_grad_interval: int = 0,
        **kwargs: Any,
    ) -> None:
        check_positive_ints({"term_grad_interval": term_grad_interval}, minimum={"term_grad_interval": 0})
        self.term_grad_interval = term_grad_interval
        self.term_grad_norms: list[dict[str, float]] = []
        self.seg_loss = loss_function
        self.distillers = dict(distillers or {})
        self.distiller_weights = {name: float((distiller_weights or {}).get(name, 1.0)) for name in self.distillers}
        unknown = set(distiller_weights or {}) - set(self.distillers)
        if unknown:
            raise ConfigKeyError(
                f"distiller_weights names {sorted(unknown)} that are not in distillers {sorted(self.distillers)}"
            )
        self.teacher = teacher
        if teacher is not None:
            if teacher_checkpoint:
                load_state_dict_checked(teacher, teacher_checkpoint, what="teacher")
            teacher.to(device)
            teacher.eval()
            teacher.requires_grad_(False)
        for module in self.distillers.values():
            module.to(device)
        check_taps(network, student_taps, self.distillers, what="student_taps")
        check_taps(teacher, teacher_taps, self.distillers, what="teacher_taps")
        self.student_taps = FeatureTaps(network, student_taps)
        self.teacher_taps = FeatureTaps(teacher, teacher_taps) if teacher is not None else None
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=self._distillation_loss,
            decollate=decollate,
            train_handlers=train_handlers,
            **kwargs,
        )

    def _distillation_loss(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The student's loss; called by ``SupervisedTrainer._iteration`` right after the student forward."""
        output = self.state.output
        teacher_pred = None
        if self.teacher is not None:
            self.teacher.eval()  # the trainer's network.train() never reaches the teacher, but handlers might
            with torch.no_grad():
                teacher_pred = self.teacher(output[Keys.IMAGE])
        inputs = DistillationInputs(
            image=output[Keys.IMAGE],
            label=label,
            student_pred=pred,
            teacher_pred=teacher_pred,
            student_features=self.student_taps.features,
            teacher_features=self.teacher_taps.features if self.teacher_taps is not None else {},
            iteration=self.state.iteration,
        )
        seg = self.seg_loss(pred, label).mean()
        total = seg
        terms = {"loss_seg": seg.detach()}
        weighted = {"seg": seg}
        for name, distiller in self.distillers.items():
            value = distiller(inputs)
            terms[f"loss_{name}"] = value.detach()
            weighted[name] = self.distiller_weights[name] * value
            total = total + weighted[name]
        output.update(terms)
        if self.term_grad_interval and self.state.iteration % self.term_grad_interval == 0:
            norms = self._term_gradient_norms(weighted)
            self.term_grad_norms.append({"iteration": self.state.iteration, **norms})
            output.update({f"grad_{name}": value for name, value in norms.items()})
        self.state.distill = {
            "image": output[Keys.IMAGE].detach(),
            "label": label.detach(),
            "student_pred": pred.detach(),
            "teacher_pred": teacher_pred,
        }
        self.student_taps.clear()
        if self.teacher_taps is not None:
            self.teacher_taps.clear()
        return total

    def _term_gradient_norms(self, weighted: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``{term: ||d(w * term)/d(student parameters)||_2}``; 0 for a term without a graph (e.g. in warm-up)."""
        params = [p for p in self.network.parameters() if p.requires_grad]
        norms = {}
        for name, value in weighted.items():
            if not value.requires_grad:
                norms[name] = 0.0
                continue
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        return norms
