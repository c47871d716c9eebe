"""GKD: generalizable cross-domain distillation (Qi et al., IEEE JBHI 2024, arXiv 2207.12995).

The method distils through *semantic vectors*: each model's bottleneck squeezed by its MSAN header
(:class:`~lightvessel_monai.gkd.msan.SemanticHeader`; TAN for the teacher, SAN for the student), see
:class:`GKDSemantics`. Its terms:

- :class:`DualContrastiveGraphDistillation` (DCGD): every image is also seen under ``views`` intensity
  augmentations. The anchor vector and the views' vectors are the nodes of, per model, an *intra-coupling* graph
  (a star around each image's anchor) and an *inter-coupling* graph (fully connected over the batch). The student's
  edges are matched to the teacher's by InfoNCE (:func:`contrastive_graph_loss`).
- :class:`DomainInvariantCrossDistillation` (DICD): header exchange. The teacher's vector is decoded by the SAN and
  the student's decoder, the student's vector by the TAN and the teacher's decoder; both cross predictions follow
  the teacher's prediction.
- :class:`SemanticAlignment`: the SAN's Alignment Consistency Training (ACT), online, since the SAN belongs to a
  student that only exists during distillation (the TAN's ACT is a cached stage,
  :mod:`lightvessel_monai.gkd.alignment`).

What the paper leaves open, and what is chosen here (marked "choice" in the docstrings below):

- **Edges.** An edge is the unit vector ``normalise(n_i - n_j)`` of its two L2-normalised nodes (the relation vector
  of relational contrastive distillation); the student's edge ``e`` is a positive for the teacher's edge at the same
  place and a negative for all other teacher edges of that graph. Teacher edges are constants.
- **Temperature** ``tau = 0.1``, the common InfoNCE value (SimCLR, CRD use 0.07-0.5).
- **Views.** Intensity views of MONAI transforms (contrast gamma 0.5-2, Gaussian noise sd 0.1, Gaussian blur half
  of the time): the style shifts that separate imaging domains, leaving the anatomy where it is. The overlay uses 1
  view per image (each view costs a pass of both encoders); the class default is 2.
- **Cross supervision.** ``KL(p_teacher || p_cross)`` at T = 1 for both cross predictions; the student's own label
  loss is the trainer's segmentation loss.
- **ACT.** ``DiceCE(reconstruction, label) + KL(p_own || p_reconstruction) + ||z - z_label||^2 +
  mean_v ||z_v - z||^2``, all weights 1: the reconstruction through the header reproduces the annotation and the
  model's own prediction; the semantic vector is pulled to the P-SAE's vector of the annotation (which holds no
  image intensities: the domain-invariant regulariser) and kept the same under the intensity views (consistency).

GKD supports multi-class (softmax) heads. Shapes are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D; semantic
vectors are ``(B, D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandAdjustContrast, RandGaussianNoise, RandGaussianSmooth
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.gkd.msan import LabelSemanticAutoEncoder, SemanticHeader, bottleneck_swap
from lightvessel_monai.losses._common import (
    check_choice,
    check_positive,
    label_to_onehot,
    require_teacher_pred,
    soft_kl,
    tap_feature,
)
from lightvessel_monai.losses.base import DistillationInputs, Distiller

__all__ = [
    "GKDSemantics",
    "SemanticVectors",
    "AlignmentConsistencyLoss",
    "DualContrastiveGraphDistillation",
    "DomainInvariantCrossDistillation",
    "SemanticAlignment",
    "graph_edges",
    "contrastive_graph_loss",
    "default_views",
    "run_to",
]

GRAPHS = ("intra", "inter")


def default_views(seed: int = 0) -> Compose:
    """The intensity augmentation of DCGD's views and ACT's consistency (see the module docstring)."""
    views = Compose(
        [
            RandAdjustContrast(prob=1.0, gamma=(0.5, 2.0)),
            RandGaussianNoise(prob=1.0, std=0.1),
            RandGaussianSmooth(prob=0.5, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        ]
    )
    views.set_random_state(seed=seed)
    return views


class _StopForward(Exception):
    """Raised by :func:`run_to`'s hook: the rest of the forward pass is not needed."""


def run_to(network: nn.Module, path: str, image: torch.Tensor) -> torch.Tensor:
    """The output of ``network``'s module at ``path`` for ``image``; the forward pass stops there."""
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        seen.append(output)
        raise _StopForward

    handle = network.get_submodule(path).register_forward_hook(hook)
    try:
        network(image)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"the forward pass of {type(network).__name__} never reached '{path}'")
    return seen[0]


def graph_edges(nodes: torch.Tensor, graph: str) -> torch.Tensor:
    """Unit edge vectors of one model's graph.

    Args:
        nodes: ``(B, 1 + V, D)``: per image, the anchor vector then the ``V`` views' vectors.
        graph: ``"intra"``: a star from each image's anchor to its views, ``B * V`` edges;
            ``"inter"``: every pair of the ``B * (1 + V)`` nodes, ``M (M - 1) / 2`` edges, in ``triu`` order.

    Returns:
        ``(E, D)``: ``normalise(n_i - n_j)`` with ``n = normalise(node)``.
    """
    check_choice(graph, GRAPHS, "DCGD graph")
    unit = F.normalize(nodes.float(), dim=-1)
    if graph == "intra":
        edges = (unit[:, 1:] - unit[:, :1]).reshape(-1, unit.shape[-1])
    else:
        flat = unit.reshape(-1, unit.shape[-1])
        i, j = torch.triu_indices(flat.shape[0], flat.shape[0], offset=1, device=flat.device)
        edges = flat[i] - flat[j]
    return F.normalize(edges, dim=-1)


def contrastive_graph_loss(
    student_nodes: torch.Tensor, teacher_nodes: torch.Tensor, graph: str, temperature: float = 0.1
) -> torch.Tensor:
    r"""InfoNCE between the student's and the teacher's edges of one graph (:func:`graph_edges`).

    .. math::
        \mathcal{L} = -\frac{1}{E} \sum_e \log
            \frac{\exp(\langle e^s_e, e^t_e \rangle / \tau)}{\sum_{e'} \exp(\langle e^s_e, e^t_{e'} \rangle / \tau)}

    Nodes are ``(B, 1 + V, D)``; the teacher's are constants.
    """
    student = graph_edges(student_nodes, graph)
    teacher = graph_edges(teacher_nodes.detach(), graph)
    logits = student @ teacher.t() / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


@dataclass
class SemanticVectors:
    """One iteration's semantic vectors: anchors ``(B, D)`` and views ``(B, V, D)``; the teacher's carry no graph."""

    student: torch.Tensor
    teacher: torch.Tensor
    student_views: torch.Tensor
    teacher_views: torch.Tensor

    def nodes(self, side: str) -> torch.Tensor:
        """``(B, 1 + V, D)``: the anchor then the views, for ``side`` ``"student"`` or ``"teacher"``."""
        anchor, views = (self.student, self.student_views) if side == "student" else (self.teacher, self.teacher_views)
        return torch.cat([anchor.unsqueeze(1), views], dim=1)


class _Network:
    """Holds a network without registering it as a sub-module: the distiller must not save, move or train it."""

    def __init__(self, network: nn.Module | None) -> None:
        self.module = network


class AlignmentConsistencyLoss(nn.Module):
    """ACT's objective for one header (see the module docstring); all inputs of one model.

    ``forward(reconstruction, own_logits, label, vector, view_vectors, label_vector)``: logits ``(B, K, ...)``, label
    ``(B, 1, ...)`` indices or one-hot, vectors ``(B, D)`` and views ``(B, V, D)``; ``own_logits`` and
    ``label_vector`` are constants.
    """

    def __init__(
        self,
        seg_weight: float = 1.0,
        own_weight: float = 1.0,
        align_weight: float = 1.0,
        consistency_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "seg": float(seg_weight),
            "own": float(own_weight),
            "align": float(align_weight),
            "consistency": float(consistency_weight),
        }
        self.seg = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)

    def parts(
        self,
        reconstruction: torch.Tensor,
        own_logits: torch.Tensor,
        label: torch.Tensor,
        vector: torch.Tensor,
        view_vectors: torch.Tensor,
        label_vector: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The unweighted parts (``align`` is 0 without a P-SAE)."""
        index = label if label.shape[1] == 1 else label.argmax(dim=1, keepdim=True)
        parts = {
            "seg": self.seg(reconstruction.float(), index),
            "own": soft_kl(reconstruction, own_logits, 1.0, "softmax"),
            "align": F.mse_loss(vector, label_vector.detach()) if label_vector is not None else vector.new_zeros(()),
            "consistency": F.mse_loss(view_vectors, vector.unsqueeze(1).expand_as(view_vectors)),
        }
        return parts

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        parts = self.parts(*args)
        return sum(self.weights[k] * v for k, v in parts.items())


class GKDSemantics(nn.Module):
    """The semantic vectors of teacher and student, shared by GKD's terms (computed once per iteration).

    Args:
        student, teacher: the two networks (held, not registered: the distiller never saves or trains them).
        student_header: the SAN, trained with the student.
        teacher_header: the TAN, trained by the ACT stage and frozen here.
        label_autoencoder: the P-SAE, trained by the ACT stage and frozen here (``None``: no alignment target).
        student_taps, teacher_taps: the networks' declared taps; ``tap`` names the bottleneck in both.
        num_classes: classes of the (softmax) head.
        views: intensity views per image for DCGD and ACT's consistency.
        augmentation: a MONAI transform applied to each ``(C, *S)`` image to make a view (default
            :func:`default_views`); ``seed`` seeds it.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        student_header: SemanticHeader,
        teacher_header: SemanticHeader,
        student_taps: Mapping[str, str],
        teacher_taps: Mapping[str, str],
        label_autoencoder: LabelSemanticAutoEncoder | None = None,
        tap: str = "bottleneck",
        num_classes: int = 2,
        views: int = 2,
        augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if student_header.semantic_dim != teacher_header.semantic_dim:
            raise ConfigKeyError(
                f"GKD: the SAN and TAN semantic_dim differ ({student_header.semantic_dim} vs "
                f"{teacher_header.semantic_dim}); the header exchange needs one semantic space"
            )
        for side, taps in (("student_taps", student_taps), ("teacher_taps", teacher_taps)):
            if tap not in (taps or {}):
                raise ConfigKeyError(f"GKD needs {side} '{tap}' (the bottleneck), declared: {sorted(taps or {})}")
        if int(views) < 1:
            raise ConfigKeyError(f"GKD views must be >= 1, got {views}")
        self._student, self._teacher = _Network(student), _Network(teacher)
        self.student_header = student_header
        self.teacher_header = teacher_header.requires_grad_(False)
        self.label_autoencoder = label_autoencoder.requires_grad_(False) if label_autoencoder is not None else None
        self.tap = tap
        self.paths = {"student": student_taps[tap], "teacher": teacher_taps[tap]}
        self.num_classes = int(num_classes)
        self.views = int(views)
        self.augmentation = augmentation if augmentation is not None else default_views(seed)

    # -- the pieces, per model ------------------------------------------------------------------------------

    def network(self, side: str) -> nn.Module:
        return self._student.module if side == "student" else self._teacher.module

    def header(self, side: str) -> SemanticHeader:
        return self.student_header if side == "student" else self.teacher_header

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (V * B, C, *S)``: view ``v`` of image ``b`` at ``v * B + b``."""
        with torch.no_grad():
            views = [self.augmentation(x) for _ in range(self.views) for x in image.detach()]
        return torch.stack([torch.as_tensor(v, device=image.device, dtype=image.dtype) for v in views])

    def encode(self, side: str, image: torch.Tensor) -> torch.Tensor:
        """Semantic vectors ``(B, D)`` of ``image`` through ``side``'s encoder and header."""
        return self.header(side).encode(run_to(self.network(side), self.paths[side], image))

    def encode_views(self, side: str, image: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """``(B, V, D)`` vectors of the ``(V * B, ...)`` views of ``image``."""
        vectors = self.encode(side, views)
        return vectors.view(self.views, image.shape[0], -1).transpose(0, 1)

    def decode(self, side: str, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """``side``'s logits for ``image`` with its bottleneck replaced by ``side``'s header decoding ``vector``."""
        header = self.header(side)
        with bottleneck_swap(self.network(side), self.paths[side], lambda out: header.decode(vector, out.shape[2:])):
            return self.network(side)(image)

    def label_vector(self, label: torch.Tensor) -> torch.Tensor | None:
        """The P-SAE's vector of the annotation ``(B, D)`` (a constant), or ``None`` without a P-SAE."""
        if self.label_autoencoder is None:
            return None
        with torch.no_grad():
            return self.label_autoencoder.encode(label_to_onehot(label, self.num_classes))

    def seed_views(self, seed: int) -> None:
        """Re-seed the views' augmentation (a MONAI ``Randomizable``; another callable is left as it is)."""
        if callable(getattr(self.augmentation, "set_random_state", None)):
            self.augmentation.set_random_state(seed=seed)

    # -- one iteration ------------------------------------------------------------------------------------------

    def compute(self, inputs: DistillationInputs) -> SemanticVectors:
        """Anchors from the trainer's taps, views from extra forward passes; computed once per step and shared by
        the step's GKD terms through ``inputs.shared`` (so the vectors, and the graph they hold, go with the step)."""
        cached = inputs.shared.get(self)
        if cached is not None:
            return cached
        student_bottleneck = tap_feature(inputs.student_features, self.tap, "student", "GKD")
        teacher_bottleneck = tap_feature(inputs.teacher_features, self.tap, "teacher", "GKD")
        views = self.augment(inputs.image)
        student_views = self.encode_views("student", inputs.image, views)
        with torch.no_grad():
            teacher = self.teacher_header.encode(teacher_bottleneck.detach())
            teacher_views = self.encode_views("teacher", inputs.image, views)
        vectors = SemanticVectors(self.student_header.encode(student_bottleneck), teacher, student_views, teacher_views)
        inputs.shared[self] = vectors
        return vectors


class _GKDTerm(Distiller):
    """A GKD term: reads the shared :class:`GKDSemantics` (its SAN is trained with the student; the TAN is frozen)."""

    method = "GKD"

    def __init__(self, semantics: GKDSemantics) -> None:
        super().__init__()
        if not isinstance(semantics, GKDSemantics):
            raise ConfigKeyError(f"{self.method}: semantics must be a GKDSemantics, got {type(semantics).__name__}")
        self.semantics = semantics

    @property
    def required_taps(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.semantics.tap,)


class DualContrastiveGraphDistillation(_GKDTerm):
    """DCGD: InfoNCE between the student's and the teacher's semantic graphs (:func:`contrastive_graph_loss`).

    Args:
        semantics: the shared :class:`GKDSemantics`.
        graph: ``"intra"`` (star around each anchor) or ``"inter"`` (fully connected over the batch); the method's
            overlay has one term per graph, so each is weighted and logged on its own.
        temperature: ``tau`` (choice: 0.1).
    """

    method = "DCGD"

    def __init__(self, semantics: GKDSemantics, graph: str = "intra", temperature: float = 0.1) -> None:
        super().__init__(semantics)
        self.graph = check_choice(graph, GRAPHS, "DCGD graph")
        self.temperature = check_positive(temperature, "DCGD temperature")

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        vectors = self.semantics.compute(inputs)
        return contrastive_graph_loss(vectors.nodes("student"), vectors.nodes("teacher"), self.graph, self.temperature)

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, temperature={self.temperature}"


class DomainInvariantCrossDistillation(_GKDTerm):
    """DICD: header exchange, both cross predictions supervised by the teacher's prediction.

    The student's cross prediction is the student's decoder on the SAN's decoding of the teacher's vector; the
    teacher's is the (frozen) teacher's decoder on the (frozen) TAN's decoding of the student's vector, so its
    gradient reaches the SAN's encoder and the student's encoder only. Returns the sum of the two KLs (T = 1).
    """

    method = "DICD"

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        target = require_teacher_pred(inputs, self.method)
        vectors = self.semantics.compute(inputs)
        student_cross = self.semantics.decode("student", inputs.image, vectors.teacher)
        teacher_cross = self.semantics.decode("teacher", inputs.image, vectors.student)
        return soft_kl(student_cross, target, 1.0, "softmax") + soft_kl(teacher_cross, target, 1.0, "softmax")


class SemanticAlignment(_GKDTerm):
    """The SAN's ACT, online: :class:`AlignmentConsistencyLoss` of the student's reconstruction through its SAN.

    Unlabelled samples: the label autoencoder encodes ``inputs.label``, the teacher's argmax where a sample has no
    label (:class:`~lightvessel_monai.losses.base.DistillationInputs`).
    """

    method = "GKD alignment"

    def __init__(self, semantics: GKDSemantics, loss: AlignmentConsistencyLoss | None = None) -> None:
        super().__init__(semantics)
        self.loss = loss if loss is not None else AlignmentConsistencyLoss()

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        vectors = self.semantics.compute(inputs)
        reconstruction = self.semantics.decode("student", inputs.image, vectors.student)
        return self.loss(
            reconstruction,
            inputs.student_pred.detach(),
            inputs.label,
            vectors.student,
            vectors.student_views,
            self.semantics.label_vector(inputs.label),
        )
