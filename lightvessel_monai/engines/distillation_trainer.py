"""DistillationTrainer: a SupervisedTrainer whose loss adds distillation terms from a frozen teacher."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from lightvessel_monai.data.unlabeled import labelled_samples
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.handlers.library_internals import iteration_output
from lightvessel_monai.losses.base import DistillationInputs
from lightvessel_monai.losses.method import DistillationMethod
from lightvessel_monai.losses.terms import DistillationTerm
from lightvessel_monai.pipeline.distributed import average_gradients, broadcast_tensors, is_distributed, unwrap
from lightvessel_monai.pipeline.settings import check_positive_ints
from lightvessel_monai.taps import FeatureTaps, InputTap

__all__ = ["DistillationTrainer", "stand_in_label", "TEACHER_PRECISIONS"]

TEACHER_PRECISIONS = ("float32", "bfloat16")


def stand_in_label(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The hard prediction of ``logits`` ``(B, K, ...)`` in the format of the label ``like``: class indices
    ``(B, 1, ...)`` or one-hot ``(B, K, ...)``; a one-channel (sigmoid) head is thresholded at logit 0."""
    logits = logits.detach()
    if logits.shape[1] == 1:
        return (logits > 0).to(like.dtype)
    indices = logits.argmax(dim=1, keepdim=True)
    if like.shape[1] == 1:
        return indices.to(like.dtype)
    return torch.zeros_like(logits, dtype=like.dtype).scatter_(1, indices, 1)


logger = logging.getLogger(__name__)


class DistillationTrainer(SupervisedTrainer):
    """Train a student with ``loss = seg_loss + sum_k weight_k * loss_k(inputs)`` from a frozen teacher.

    Everything of :class:`monai.engines.SupervisedTrainer` (AMP, gradient accumulation, handlers,
    ``torch.compile``) is kept: this class only supplies the loss function. For every iteration it runs
    the teacher without gradients on the input the student just saw (inside the same autocast region), reads the
    feature taps of both networks and evaluates each term on a
    :class:`~lightvessel_monai.losses.base.DistillationInputs`.

    The terms come from one :class:`~lightvessel_monai.losses.DistillationMethod` (or the ``distillation``
    mapping it is built from, ``{name: {"loss": ..., "weight": ..., "handlers": [...]}}``). The trainer attaches
    every term's handlers itself, before
    ``train_handlers``, so that a term's state (a critic, a self-teacher) is updated before a checkpoint handler
    saves it. A handler that needs the step's tensors (the critic update of ASD and SKD) defines
    ``after_step(engine, inputs)``: the trainer calls it once per iteration, after the student's optimiser step
    (``IterationEvents.MODEL_COMPLETED``), with the step's :class:`DistillationInputs` detached.

    **Unlabelled samples.** A sample whose label is negative (-1 everywhere: an unlabelled image from
    :class:`~lightvessel_monai.engines.MixedBatch`, or an input mixup has mixed) is left out of the segmentation
    loss, and every distillation term sees it, with the teacher's prediction (argmax) in place of its label (the
    student's own, detached, when there is no teacher); :attr:`DistillationInputs.labelled` says which samples are
    which. A batch of labelled samples only is trained exactly as before.

    ``engine.state.output`` holds, besides the usual ``image``/``label``/``pred``/``loss``, one entry
    ``loss_<name>`` per term (``loss_seg`` and the *unweighted* term values).

    The teacher must hold its trained weights before :meth:`run`: the bundle's ``run`` plan loads them with
    :class:`~lightvessel_monai.pipeline.stages.TeacherStage` first. Tap paths and each term's required taps are
    checked by the bundle's pre-flight step (:class:`~lightvessel_monai.pipeline.stages.Preflight`), before any
    training.

    Args:
        network: the student.
        loss_function: the segmentation loss ``(pred, label) -> scalar`` (e.g. ``DiceCELoss``).
        teacher: the trained teacher network, or ``None`` for teacher-free (self-)distillation.
        teacher_taps, student_taps: ``{tap_name: module_path}`` read with forward hooks.
        distillation: the :class:`~lightvessel_monai.losses.DistillationMethod`, or its
            ``{name: {"loss": Distiller, "weight": float, "handlers": [...]}}`` mapping; ``None`` or ``{}`` trains
            on the segmentation loss alone.
        teacher_precision: ``"float32"`` (default) or ``"bfloat16"``: the teacher's forward pass under CPU bfloat16
            autocast, its prediction and tapped features cast back to float32 before any term reads them. On a CPU
            with bfloat16 instructions (``avx512_bf16``/``amx_bf16``) it is about 2x faster than float32 (XCA teacher,
            docs/benchmarks.md), on one without them far slower; it changes the teacher's outputs slightly, so it
            is a choice, recorded in the run fingerprint, and not a default. On CUDA, ``amp`` covers both networks.
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
        teacher_taps: Mapping[str, str] | None = None,
        student_taps: Mapping[str, str] | None = None,
        distillation: DistillationMethod | Mapping[str, Any] | None = None,
        decollate: bool = False,
        train_handlers: Sequence | None = None,
        term_grad_interval: int = 0,
        teacher_precision: str = "float32",
        **kwargs: Any,
    ) -> None:
        if teacher_precision not in TEACHER_PRECISIONS:
            raise ConfigKeyError(
                f"config key 'teacher_precision' must be one of {', '.join(TEACHER_PRECISIONS)}, "
                f"got {teacher_precision!r}"
            )
        self.teacher_precision = teacher_precision
        check_positive_ints({"term_grad_interval": term_grad_interval}, minimum={"term_grad_interval": 0})
        self.term_grad_interval = term_grad_interval
        self.term_grad_norms: list[dict[str, float]] = []
        self.seg_loss = loss_function
        self.method = DistillationMethod.of(distillation)
        self.terms: dict[str, DistillationTerm] = self.method.terms
        self.teacher = teacher
        if teacher is not None:
            teacher.to(device)
            teacher.eval()
            teacher.requires_grad_(False)
        for term in self.terms.values():
            term.loss.to(device)
        # taps and the input pre-hook sit on the student itself, inside a DistributedDataParallel wrapper if any
        self.student_taps = FeatureTaps(unwrap(network), student_taps)
        self.teacher_taps = FeatureTaps(teacher, teacher_taps) if teacher is not None else None
        # The input of the student's forward, read by a pre-hook: the teacher sees exactly what the student saw,
        # without relying on where SupervisedTrainer keeps the batch.
        self.student_input = InputTap(unwrap(network))
        self._step_inputs: DistillationInputs | None = None
        term_handlers = self.method.handlers
        self._after_step_handlers = tuple(h for h in term_handlers if callable(getattr(h, "after_step", None)))
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=self._distillation_loss,
            decollate=decollate,
            train_handlers=[*term_handlers, *(train_handlers or [])],
            **kwargs,
        )
        if self._after_step_handlers:
            self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._after_step)
        if is_distributed():
            # after the train handlers' STARTED (a resume load): every rank starts from rank 0's term parameters
            # the list is fixed with the optimiser: found once, not on every backward pass
            self._hand_synced = self._unsynced_params()
            self.add_event_handler(Events.STARTED, lambda _: broadcast_tensors(self._hand_synced))
            self.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._average_term_gradients)

    def _unsynced_params(self) -> list[torch.Tensor]:
        """The optimiser's parameters that no DistributedDataParallel wrapper keeps in step (the term parameters:
        adapters, side heads, MSAN headers; all of them when the student is not wrapped)."""
        wrapped = isinstance(self.network, nn.parallel.DistributedDataParallel)
        skip = {id(p) for p in self.network.parameters()} if wrapped else set()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return [p for p in params if id(p) not in skip]

    def _average_term_gradients(self, engine: DistillationTrainer) -> None:
        """Mean all-reduce of the unwrapped parameters' gradients, before the optimiser step (as DDP does)."""
        average_gradients(self._hand_synced)

    @property
    def after_step_handlers(self) -> tuple[Any, ...]:
        """The term handlers called with each step's detached inputs after the optimiser step (the critic updates)."""
        return self._after_step_handlers

    @property
    def distillers(self) -> dict[str, nn.Module]:
        """``{name: loss module}`` of the terms."""
        return self.method.losses

    def _distillation_loss(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The student's loss; SupervisedTrainer calls it with the student's prediction, after the forward."""
        image = self.student_input.pop()
        if image is None:
            raise RuntimeError("DistillationTrainer: the loss was called without a student forward pass")
        teacher_pred = None
        if self.teacher is not None:
            self.teacher.eval()  # the trainer's network.train() never reaches the teacher, but handlers might
            teacher_pred = self._teacher_forward(image)
        inputs = DistillationInputs(
            image=image,
            label=label,
            student_pred=pred,
            teacher_pred=teacher_pred,
            # copies: a term that runs a network again (GKD's views) must not change what later terms read
            student_features=dict(self.student_taps.features),
            teacher_features=self._teacher_features(),
            iteration=self.state.iteration,
        )
        seg = self._segmentation_loss(pred, label, inputs)
        total = seg
        logged = {"loss_seg": seg.detach()}
        weighted = {"seg": seg}
        for name, term in self.terms.items():
            value = term.loss(inputs)
            logged[f"loss_{name}"] = value.detach()
            weighted[name] = term.weight * value
            total = total + weighted[name]
        output = iteration_output(self)
        output.update(logged)
        if self.term_grad_interval and self.state.iteration % self.term_grad_interval == 0:
            norms = self._term_gradient_norms(weighted)
            self.term_grad_norms.append({"iteration": self.state.iteration, **norms})
            output.update({f"grad_{name}": value for name, value in norms.items()})
        self._step_inputs = inputs.detached() if self._after_step_handlers else None
        self.student_taps.clear()
        if self.teacher_taps is not None:
            self.teacher_taps.clear()
        return total

    def _teacher_forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.teacher_precision == "float32" or image.device.type != "cpu":
                return self.teacher(image)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.teacher(image).float()

    def _teacher_features(self) -> dict[str, torch.Tensor]:
        if self.teacher_taps is None:
            return {}
        features = dict(self.teacher_taps.features)
        if self.teacher_precision != "float32":  # every term computes in the student's float32
            features = {k: v.float() if v.is_floating_point() else v for k, v in features.items()}
        return features

    def _segmentation_loss(self, pred: torch.Tensor, label: torch.Tensor, inputs: DistillationInputs) -> torch.Tensor:
        """The segmentation loss of the labelled samples; unlabelled ones get a stand-in label in ``inputs``."""
        labelled = labelled_samples(label)
        if bool(labelled.all()):
            return self.seg_loss(pred, label).mean()
        inputs.labelled = labelled
        inputs.label = torch.where(
            labelled.reshape((-1,) + (1,) * (label.ndim - 1)),
            label,
            stand_in_label(inputs.teacher_pred if inputs.teacher_pred is not None else pred.detach(), label),
        )
        if not bool(labelled.any()):
            return pred.sum() * 0.0  # keeps the graph: the terms still train the student
        return self.seg_loss(pred[labelled], label[labelled]).mean()

    def _after_step(self, engine: DistillationTrainer) -> None:
        inputs, self._step_inputs = self._step_inputs, None
        if inputs is None:
            return
        for handler in self._after_step_handlers:
            handler.after_step(engine, inputs)

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
