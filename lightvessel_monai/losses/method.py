"""A distillation method as one object, built once from a method overlay's ``distillation`` mapping.

Every part of a run that depends on the method takes this object, and nothing else reads the mapping:

- the student's optimiser: :meth:`DistillationMethod.parameters` (the student's parameters, then the terms');
- the resume file: :meth:`DistillationMethod.training_state`;
- pre-flight: :meth:`DistillationMethod.check_taps`;
- the run fingerprint: :meth:`DistillationMethod.fingerprint` and :attr:`DistillationMethod.recipe`;
- the trainer: :attr:`DistillationMethod.terms` (losses, weights and the handlers it attaches).

In ``train.json``::

    "method": {"_target_": "lightvessel_monai.losses.DistillationMethod", "distillation": "@distillation"}

Per-step values that several terms share (GKD's semantic vectors) live in
:attr:`~lightvessel_monai.losses.base.DistillationInputs.shared`, which is made for each step and dropped with it.
A method's extra preparation (GKD's alignment-consistency training) is a stage appended to the bundle's
``prepare`` list by its overlay, with MONAI's ``+prepare`` merge key, so that it runs after the teacher stage.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses.terms import DistillationTerm, parse_terms
from lightvessel_monai.taps import check_taps

__all__ = ["DistillationMethod", "student_parameters"]


def _trainable(module: nn.Module) -> Iterator[nn.Parameter]:
    get = getattr(module, "trainable_parameters", None)
    yield from (get() if callable(get) else (p for p in module.parameters() if p.requires_grad))


class DistillationMethod:
    """The terms of a distillation method, their weights and handlers, parsed once.

    Args:
        distillation: the resolved ``{name: {"loss": Distiller, "weight": float, "handlers": [...]}}`` mapping;
            ``None`` or ``{}`` is training on the segmentation loss alone. Each mistake is a one-line
            :class:`~lightvessel_monai.errors.ConfigKeyError` naming ``key#<term>``
            (:func:`~lightvessel_monai.losses.terms.parse_terms`).
        key: the config key the mapping came from, for those messages.
    """

    def __init__(self, distillation: Mapping[str, Any] | None = None, key: str = "distillation") -> None:
        self.terms: dict[str, DistillationTerm] = parse_terms(distillation, key)
        self.recipe: Mapping[str, Any] = dict(distillation or {})
        # as written in the config (1 stays 1, not 1.0): the run fingerprint hashes them, and must not change
        self._configured_weights = {name: entry.get("weight", 1.0) for name, entry in self.recipe.items()}

    @classmethod
    def of(cls, method: DistillationMethod | Mapping[str, Any] | None) -> DistillationMethod:
        """``method`` itself, or a method built from a ``distillation`` mapping (as the trainer's tests pass it)."""
        return method if isinstance(method, cls) else cls(method)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        terms = ", ".join(f"{name}={type(t.loss).__name__}x{t.weight:g}" for name, t in self.terms.items())
        return f"DistillationMethod({terms})"

    @property
    def losses(self) -> dict[str, nn.Module]:
        """``{name: loss module}`` in config order."""
        return {name: term.loss for name, term in self.terms.items()}

    @property
    def weights(self) -> dict[str, float]:
        return {name: term.weight for name, term in self.terms.items()}

    @property
    def handlers(self) -> list[Any]:
        """Every term's handlers, in term order (the trainer attaches them)."""
        return [h for term in self.terms.values() for h in term.handlers]

    def parameters(self, network: nn.Module) -> list[nn.Parameter]:
        """The student's parameters followed by the trainable parameters of every term's loss, without duplicates.

        The ``params`` of the student optimiser, so that adapters and side heads learn with the student; a critic
        or a self-teacher (a distiller's ``external_modules``) is left to its handler.
        """
        params: list[nn.Parameter] = []
        seen: set[int] = set()
        for group in (network.parameters(), *(_trainable(loss) for loss in self.losses.values())):
            for p in group:
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def training_state(self, network: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The ``save_dict`` of a resumable run: the student, its optimiser, every term's loss module (adapters,
        side heads, critics, self-teachers) and every term handler with a ``state_dict`` (a critic's optimiser)."""
        state: dict[str, Any] = {"network": network, "optimizer": optimizer}
        if self.terms:
            state["distillers"] = nn.ModuleDict(self.losses)
        for index, handler in enumerate(self.handlers):
            if callable(getattr(handler, "state_dict", None)) and callable(getattr(handler, "load_state_dict", None)):
                state[f"handler_{index}_{type(handler).__name__}"] = handler
        return state

    def required_taps(self, side: Literal["student", "teacher"]) -> dict[str, tuple[str, ...]]:
        """``{term: taps}`` that each term reads on ``side`` (its loss's ``required_<side>_taps``)."""
        if side not in ("student", "teacher"):
            raise ValueError(f"side must be 'student' or 'teacher', got {side!r}")
        return {name: tuple(getattr(loss, f"required_{side}_taps", ())) for name, loss in self.losses.items()}

    def check_taps(
        self, network: nn.Module | None, taps: Mapping[str, str] | None, side: Literal["student", "teacher"]
    ) -> None:
        """Pre-flight: every tap path exists in ``network`` and every tap a term reads on ``side`` is declared.

        One-line :class:`~lightvessel_monai.errors.ConfigKeyError` naming ``student_taps`` or ``teacher_taps``.
        Nothing is checked without a network (a method without a teacher).
        """
        check_taps(network, taps, self.required_taps(side), side=side)

    def require_terms(self, names: Sequence[str], overlay: str, base: str) -> None:
        """Pre-flight of a composed overlay (``dskd_kd.json`` adds a term to ``dskd.json``'s with MONAI's
        ``+distillation`` merge): a one-line error when the base overlay's terms are missing, i.e. when the base was
        not listed before it and ``+distillation`` merged into the bundle's default method instead."""
        missing = [name for name in names if name not in self.terms]
        if missing:
            raise ConfigKeyError(
                f"{overlay} adds to the terms of {base}, which are missing ({', '.join(missing)}; the method has "
                f"{', '.join(self.terms) or 'none'}): list {base} before {overlay} in --config_file"
            )

    def fingerprint(self) -> dict[str, Any]:
        """The method's part of the run fingerprint's settings: each term's weight as configured."""
        return {"weights": dict(self._configured_weights)}


def student_parameters(
    network: nn.Module, distillation: DistillationMethod | Mapping[str, Any] | None = None
) -> list[nn.Parameter]:
    """:meth:`DistillationMethod.parameters` of a method or of a ``distillation`` mapping."""
    return DistillationMethod.of(distillation).parameters(network)
