"""A distillation method as config: one ``distillation`` mapping, one entry per term.

Every method overlay (and the bundle's default, LightVessel) writes its terms in one shape::

    "distillation": {
        "fsd": {"loss": {"_target_": "lightvessel_monai.losses.FeatureSimilarityDistillation", ...}, "weight": 1.0},
        "asd": {"loss": {...}, "weight": 0.01, "handlers": [{"_target_": "...AdversarialUpdateHandler", ...}]}
    }

``loss`` is a :class:`~lightvessel_monai.losses.base.Distiller` (any module called with a
:class:`~lightvessel_monai.losses.base.DistillationInputs`), ``weight`` its factor in the student's loss (default 1)
and ``handlers`` the ignite handlers that keep its state (a critic's update, a self-teacher). The
:class:`~lightvessel_monai.engines.DistillationTrainer` attaches those handlers itself, once; nothing else lists them.
The mapping is parsed once, by :class:`~lightvessel_monai.losses.method.DistillationMethod`, which the rest takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightvessel_monai.errors import ConfigKeyError

__all__ = ["DistillationTerm", "TERM_KEYS", "parse_terms"]

TERM_KEYS = ("loss", "weight", "handlers")


@dataclass
class DistillationTerm:
    """One term of the student's loss: ``weight * loss(inputs)``, and the handlers that serve it."""

    name: str
    loss: nn.Module
    weight: float = 1.0
    handlers: list[Any] = field(default_factory=list)


def parse_terms(distillation: Mapping[str, Any] | None, key: str = "distillation") -> dict[str, DistillationTerm]:
    """Check a resolved ``distillation`` mapping and return ``{name: DistillationTerm}`` in config order.

    Each mistake is a one-line :class:`~lightvessel_monai.errors.ConfigKeyError` naming ``key#<term>``: a term that
    is not a mapping, an unknown key in a term (``"wieght"``), a term without a ``loss``, a loss that is not an
    ``nn.Module``, a weight that is not a finite number, a handler without ``attach`` or listed twice.
    """
    if distillation is None:
        return {}
    if not isinstance(distillation, Mapping):
        raise ConfigKeyError(
            f"'{key}' must map term names to {{loss, weight, handlers}}, got {type(distillation).__name__}"
        )
    terms: dict[str, DistillationTerm] = {}
    seen_handlers: dict[int, str] = {}
    for name, entry in distillation.items():
        where = f"{key}#{name}"
        if not isinstance(entry, Mapping):
            raise ConfigKeyError(f"'{where}' must be a mapping with keys {', '.join(TERM_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(TERM_KEYS))
        if unknown:
            raise ConfigKeyError(
                f"'{where}' has unknown key(s) {', '.join(unknown)}; a term has {', '.join(TERM_KEYS)}"
            )
        if "loss" not in entry:
            raise ConfigKeyError(f"'{where}' has no 'loss'; a term has {', '.join(TERM_KEYS)}")
        loss = entry["loss"]
        if not isinstance(loss, nn.Module):
            raise ConfigKeyError(
                f"'{where}#loss' must be a distillation loss (an nn.Module), got {type(loss).__name__}"
            )
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigKeyError(f"'{where}#weight' must be a finite number, got {weight!r}")
        handlers = entry.get("handlers") or []
        if not isinstance(handlers, (list, tuple)):
            raise ConfigKeyError(f"'{where}#handlers' must be a list, got {type(handlers).__name__}")
        for index, handler in enumerate(handlers):
            if not callable(getattr(handler, "attach", None)):
                raise ConfigKeyError(f"'{where}#handlers#{index}' ({type(handler).__name__}) has no attach(engine)")
            if id(handler) in seen_handlers:
                raise ConfigKeyError(
                    f"'{where}#handlers#{index}' is the handler already listed by '{seen_handlers[id(handler)]}': "
                    "a handler belongs to one term"
                )
            seen_handlers[id(handler)] = where
        terms[str(name)] = DistillationTerm(str(name), loss, float(weight), list(handlers))
    return terms
