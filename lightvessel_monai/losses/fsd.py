"""Feature-wise Similarity Distillation (FSD) of LightVessel.

Reference:
    H. Dang, Y. Zhang, X. Qi, W. Zhou, M. Sun, "LightVessel: Exploring Lightweight Coronary Artery Vessel
    Segmentation via Similarity Knowledge Distillation", ICASSP 2023, https://arxiv.org/abs/2211.00899.

The teacher's similarity between symmetric encoder and decoder features (the relation that its skip
connections exploit) is transferred to the student: for every declared ``(encoder tap, decoder tap)`` pair
the position-by-position cosine-similarity matrices of teacher and student are matched with a squared error.
Node pooling (average pooling before the similarity) is the one of Liu et al., "Structured Knowledge
Distillation for Semantic Segmentation", CVPR 2019.

The ``N x N`` similarity matrices are never built: with ``N = H*W`` (or ``D*H*W``) positions they would take
``B*N^2`` floats, about 1.1 TB at 512x512 with batch 4. The implicit form uses
``||A^T B||_F^2 = tr((A A^T)(B B^T))`` and needs only ``C x C`` channel Gram matrices, so memory is linear in N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lightvessel_monai.losses._common import (
    REDUCTIONS,
    channel_l2_normalise,
    check_choice,
    check_positive,
    full_precision,
    reduce_terms,
    tap_feature,
)
from lightvessel_monai.losses.base import DistillationInputs, Distiller

__all__ = ["FeatureSimilarityDistillation", "fsd_pair_loss", "naive_similarity_loss"]

GridSpec = str | Sequence[int]

_GRID_NAMES = ("largest", "smallest")
_INTERP_MODES = {2: "bilinear", 3: "trilinear"}
_POOLS = {2: F.avg_pool2d, 3: F.avg_pool3d}
_HALF_DTYPES = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------- validation


def _check_grid(grid: GridSpec) -> str | tuple[int, ...]:
    if isinstance(grid, str):
        if grid not in _GRID_NAMES:
            raise ValueError(f"FSD grid must be 'largest', 'smallest' or a tuple of positive ints, got '{grid}'")
        return grid
    if isinstance(grid, Sequence) and len(grid) > 0:
        size = tuple(grid)
        if all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            return size
    raise ValueError(f"FSD grid must be 'largest', 'smallest' or a tuple of positive ints, got {grid!r}")


def _check_pool_size(pool_size: int | None) -> int | None:
    if pool_size is None:
        return None
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"FSD pool_size must be None or a positive int, got {pool_size!r}")
    return pool_size


def _check_compute_dtype(compute_dtype: torch.dtype | str | None) -> torch.dtype | None:
    if compute_dtype is None:
        return None
    dtype = compute_dtype
    if isinstance(dtype, str):  # config-friendly: "float64" or "torch.float64"
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"FSD compute_dtype must be None or a floating torch dtype, got {compute_dtype!r}")
    return dtype


# ------------------------------------------------------------------------------------------------- helpers


def _dtypes(tensors: Sequence[torch.Tensor], compute_dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, dtype of the returned loss); half precision is lifted to float32 for both."""
    natural = tensors[0].dtype
    for t in tensors[1:]:
        natural = torch.promote_types(natural, t.dtype)
    if not natural.is_floating_point or natural in _HALF_DTYPES:
        natural = torch.float32
    return (compute_dtype or natural), natural


def _check_shapes(tensors: Sequence[torch.Tensor]) -> int:
    """Return the number of spatial dims; all four features must agree on batch size and dimensionality."""
    names = ("teacher_enc", "teacher_dec", "student_enc", "student_dec")
    ndim, batch = tensors[0].ndim, tensors[0].shape[0]
    if ndim - 2 not in _INTERP_MODES:
        raise ValueError(
            f"FSD expects (B, C, H, W) or (B, C, D, H, W) features, got teacher_enc of shape {tuple(tensors[0].shape)}"
        )
    for name, t in zip(names, tensors, strict=True):
        if t.ndim != ndim or t.shape[0] != batch:
            shapes = ", ".join(f"{n}={tuple(x.shape)}" for n, x in zip(names, tensors, strict=True))
            raise ValueError(f"FSD features must share batch size and spatial dims ({name} differs): {shapes}")
    # S = E^T D takes a dot product of an encoder and a decoder feature vector, so their lengths must agree
    for owner, enc, dec in (("teacher", tensors[0], tensors[1]), ("student", tensors[2], tensors[3])):
        if enc.shape[1] != dec.shape[1]:
            raise ValueError(
                f"FSD needs equal encoder and decoder channels within the {owner} (S = E^T D is a dot product per "
                f"position pair), got {owner}_enc with {enc.shape[1]} and {owner}_dec with {dec.shape[1]} channels"
            )
    return ndim - 2


def _target_grid(tensors: Sequence[torch.Tensor], grid: str | tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    shapes = [tuple(t.shape[2:]) for t in tensors]
    if grid == "largest":  # the shape with most positions (first one on ties)
        return max(shapes, key=math.prod)
    if grid == "smallest":
        return min(shapes, key=math.prod)
    if len(grid) != spatial_dims:
        raise ValueError(f"FSD grid {grid} has {len(grid)} dims but the features have {spatial_dims} spatial dims")
    return tuple(grid)


def _nodes(
    x: torch.Tensor, size: tuple[int, ...], pool_size: int | None, dtype: torch.dtype, eps: float
) -> torch.Tensor:
    """Resize, pool, L2-normalise over channels and flatten: ``(B, C, *spatial) -> (B, C, N)``."""
    x = x.to(dtype)
    spatial_dims = x.ndim - 2
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode=_INTERP_MODES[spatial_dims], align_corners=False)
    if pool_size is not None and pool_size > 1:
        if min(size) < pool_size:
            raise ValueError(f"FSD pool_size {pool_size} is larger than the common grid {size}")
        x = _POOLS[spatial_dims](x, kernel_size=pool_size, stride=pool_size)
    return channel_l2_normalise(x, eps).flatten(2)


def _prepare(
    teacher_enc: torch.Tensor,
    teacher_dec: torch.Tensor,
    student_enc: torch.Tensor,
    student_dec: torch.Tensor,
    grid: GridSpec,
    pool_size: int | None,
    compute_dtype: torch.dtype | str | None,
    eps: float,
) -> tuple[list[torch.Tensor], torch.dtype]:
    grid = _check_grid(grid)
    pool_size = _check_pool_size(pool_size)
    compute_dtype = _check_compute_dtype(compute_dtype)
    # the teacher is a fixed target: no gradient may reach it, even if its features carry a graph
    tensors = [teacher_enc.detach(), teacher_dec.detach(), student_enc, student_dec]
    spatial_dims = _check_shapes(tensors)
    size = _target_grid(tensors, grid, spatial_dims)
    dtype, out_dtype = _dtypes(tensors, compute_dtype)
    return [_nodes(t, size, pool_size, dtype, eps) for t in tensors], out_dtype


# ---------------------------------------------------------------------------------------------- functional


def fsd_pair_loss(
    teacher_enc: torch.Tensor,
    teacher_dec: torch.Tensor,
    student_enc: torch.Tensor,
    student_dec: torch.Tensor,
    grid: GridSpec = "largest",
    pool_size: int | None = None,
    implicit: bool = True,
    compute_dtype: torch.dtype | str | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""FSD loss of one symmetric encoder/decoder pair.

    With ``E, D`` the channel-L2-normalised encoder and decoder features flattened to ``(B, C, N)``
    (``N = H*W`` in 2D, ``D*H*W`` in 3D) and ``S = E^T D`` the ``(B, N, N)`` cosine similarity of every
    encoder position with every decoder position,

    .. math::
        \mathcal{L} = \frac{1}{B N^2} \sum_b \lVert S^t_b - S^s_b \rVert_F^2.

    The implicit form (default) writes ``S^t - S^s = \tilde A^T \tilde B`` with
    ``\tilde A = [E^t; E^s]`` and ``\tilde B = [D^t; -D^s]`` stacked over channels, so that
    ``||S^t - S^s||_F^2 = tr((\tilde A \tilde A^T)(\tilde B \tilde B^T))``, the sum of the elementwise
    product of two ``(C^t + C^s)``-square Gram matrices. It is evaluated block by block,
    ``<E^t E^{tT}, D^t D^{tT}> - 2 <E^t E^{sT}, D^t D^{sT}> + <E^s E^{sT}, D^s D^{sT}>`` with
    ``<X, Y> = sum(X * Y)``: exact (up to rounding), with time and memory linear in N. The result is clamped at 0.

    Args:
        teacher_enc: teacher encoder feature ``(B, C^t, H, W)`` in 2D or ``(B, C^t, D, H, W)`` in 3D; detached.
        teacher_dec: teacher decoder feature ``(B, C^t, ...)``; detached. Its channel count must equal the
            encoder's (each entry of ``S`` is a dot product of an encoder and a decoder feature vector).
        student_enc: student encoder feature ``(B, C^s, ...)``; ``C^s`` may differ from ``C^t``.
        student_dec: student decoder feature ``(B, C^s, ...)``.
            The spatial sizes of the four features may differ: they are resized to a common grid.
        grid: common spatial grid: ``"largest"`` (the spatial shape with most positions among the four
            features), ``"smallest"``, or an explicit tuple such as ``(128, 128)`` or ``(32, 64, 64)``.
            Resizing is (bi/tri)linear with ``align_corners=False`` and skipped for features already at size.
        pool_size: kernel and stride of an average pooling applied after resizing (node pooling); ``None``
            or 1 for none. Pooling by ``p`` divides N by ``p^dims`` and the naive cost by ``p^(2*dims)``.
        implicit: ``True`` for the Gram form; ``False`` materialises ``S`` (see :func:`naive_similarity_loss`).
        compute_dtype: dtype of the normalisation and Gram products. ``None`` uses the inputs' dtype, lifted
            to float32 for float16/bfloat16 (also under ``torch.autocast``, which is disabled inside).
            The Gram entries are sums over N terms (262,144 at 512x512) and the loss is, in effect, a
            difference of such sums, so in float32 its absolute error is of order ``1e-7 * mean(S^2)``
            (about 1e-8 measured at 512x512 with 64 channels): ample for training, but once the loss falls
            below ~1e-5 (student similarities already very close) ``torch.float64`` gives more correct digits.
        eps: the smallest norm divided by (as in ``F.normalize``; guards all-zero feature vectors).

    Returns:
        scalar tensor, in the inputs' floating dtype (float32 for half-precision inputs).
    """
    with full_precision(student_enc.device):
        (et, dt, es, ds), out_dtype = _prepare(
            teacher_enc, teacher_dec, student_enc, student_dec, grid, pool_size, compute_dtype, eps
        )
        loss = _implicit(et, dt, es, ds) if implicit else _naive(et, dt, es, ds)
    return loss.to(out_dtype)


def _implicit(et: torch.Tensor, dt: torch.Tensor, es: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """Mean over B of ``||E_t^T D_t - E_s^T D_s||_F^2 / N^2`` from channel Gram matrices, without any N x N.

    With ``A = [E_t; E_s]`` and ``B = [D_t; -D_s]`` stacked over channels, ``A^T B = S_t - S_s`` and
    ``||A^T B||_F^2 = tr((A A^T)(B B^T)) = sum((A A^T) * (B B^T))``. Summed block by block this is
    ``<E_t E_t^T, D_t D_t^T> - 2 <E_t E_s^T, D_t D_s^T> + <E_s E_s^T, D_s D_s^T>``: the same terms, but
    without the stacked copies of the features (half the peak memory) and with the teacher-only block
    computed outside autograd.
    """
    n = et.shape[-1]

    def inner(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        # <a1 b1^T, a2 b2^T> per sample, from two small (B, C, C') Gram matrices
        return (torch.bmm(a1, b1.transpose(1, 2)) * torch.bmm(a2, b2.transpose(1, 2))).sum(dim=(1, 2))

    with torch.no_grad():  # teacher features are constants
        teacher_term = inner(et, et, dt, dt)
    per_sample = (teacher_term - 2.0 * inner(et, es, dt, ds) + inner(es, es, ds, ds)) / float(n) ** 2
    # the sum cancels to ~0 when the student matches the teacher; rounding may leave it slightly negative
    return per_sample.clamp_min(0.0).mean()


def _naive(et: torch.Tensor, dt: torch.Tensor, es: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    s_t = torch.bmm(et.transpose(1, 2), dt)  # (B, N, N)
    s_s = torch.bmm(es.transpose(1, 2), ds)
    return (s_t - s_s).pow(2).mean()


def naive_similarity_loss(
    teacher_enc: torch.Tensor,
    teacher_dec: torch.Tensor,
    student_enc: torch.Tensor,
    student_dec: torch.Tensor,
    grid: GridSpec = "largest",
    pool_size: int | None = None,
    compute_dtype: torch.dtype | str | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Reference FSD pair loss that materialises the ``(B, N, N)`` similarity matrices.

    Same definition and arguments as :func:`fsd_pair_loss`; memory grows as ``B * N^2`` (about 1.1 TB in
    float32 at 512x512 with batch 4), so it is meant for tests and benchmarks on small grids only.
    """
    return fsd_pair_loss(
        teacher_enc,
        teacher_dec,
        student_enc,
        student_dec,
        grid=grid,
        pool_size=pool_size,
        implicit=False,
        compute_dtype=compute_dtype,
        eps=eps,
    )


# ----------------------------------------------------------------------------------------------- distiller


class FeatureSimilarityDistillation(Distiller):
    r"""Feature-wise Similarity Distillation (FSD) over symmetric encoder/decoder tap pairs.

    Dang et al., "LightVessel: Exploring Lightweight Coronary Artery Vessel Segmentation via Similarity
    Knowledge Distillation", ICASSP 2023 (arXiv:2211.00899). For each pair ``(enc, dec)``, with
    ``S = E^T D`` the cosine similarity between every encoder position and every decoder position
    (see :func:`fsd_pair_loss`),

    .. math::
        \mathcal{L}_{FSD} = \sum_{(enc, dec)} \frac{1}{B N^2} \sum_b \lVert S^t_b - S^s_b \rVert_F^2

    (or the mean over pairs with ``reduction="mean"``). Features are ``(B, C, H, W)`` in 2D and
    ``(B, C, D, H, W)`` in 3D; teacher and student channel counts may differ (the encoder and decoder taps
    of one network must have equal channels) and spatial sizes may differ. Teacher features are
    detached, so the term only trains the student.

    Args:
        pairs: ``[[enc_tap, dec_tap], ...]``; each name must be a tap of both teacher and student
            (``inputs.teacher_features[name]`` and ``inputs.student_features[name]``).
        grid: ``"largest"`` (default), ``"smallest"`` or an explicit spatial size; see :func:`fsd_pair_loss`.
        pool_size: average-pooling kernel/stride applied after resizing (node pooling), or ``None``.
        implicit: compute without the ``N x N`` matrices (default); ``False`` only for small grids.
        compute_dtype: ``None`` (input dtype, at least float32), ``torch.float64`` or ``"float64"``, ...
        reduction: ``"sum"`` (default) or ``"mean"`` over pairs.
        eps: ``eps`` of the channel L2 normalisation.

    Example::

        fsd = FeatureSimilarityDistillation(pairs=[["enc1", "dec1"], ["enc2", "dec2"]], pool_size=2)
        loss = fsd(DistillationInputs(image, label, student_pred, teacher_pred,
                                      student_features=student_taps.features,
                                      teacher_features=teacher_taps.features))
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[str]],
        grid: GridSpec = "largest",
        pool_size: int | None = None,
        implicit: bool = True,
        compute_dtype: torch.dtype | str | None = None,
        reduction: str = "sum",
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if isinstance(pairs, str) or not isinstance(pairs, Sequence) or len(pairs) == 0:
            raise ValueError(f"FSD pairs must be a non-empty list of [enc_tap, dec_tap], got {pairs!r}")
        checked: list[tuple[str, str]] = []
        for pair in pairs:
            if (
                isinstance(pair, str)
                or not isinstance(pair, Sequence)
                or len(pair) != 2
                or not all(isinstance(name, str) and name for name in pair)
            ):
                raise ValueError(f"FSD pair must be [enc_tap, dec_tap] (two tap names), got {pair!r}")
            checked.append((pair[0], pair[1]))
        self.pairs = tuple(checked)
        self.grid = _check_grid(grid)
        self.pool_size = _check_pool_size(pool_size)
        self.implicit = bool(implicit)
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        self.reduction = check_choice(reduction, REDUCTIONS, "FSD reduction")
        self.eps = check_positive(eps, "FSD eps")
        self.required_taps = tuple(dict.fromkeys(name for pair in self.pairs for name in pair))

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        teacher, student = inputs.teacher_features, inputs.student_features
        losses = []
        for enc, dec in self.pairs:
            losses.append(
                fsd_pair_loss(
                    tap_feature(teacher, enc, "teacher", "FSD"),
                    tap_feature(teacher, dec, "teacher", "FSD"),
                    tap_feature(student, enc, "student", "FSD"),
                    tap_feature(student, dec, "student", "FSD"),
                    grid=self.grid,
                    pool_size=self.pool_size,
                    implicit=self.implicit,
                    compute_dtype=self.compute_dtype,
                    eps=self.eps,
                )
            )
        return reduce_terms(losses, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"pairs={list(self.pairs)}, grid={self.grid!r}, pool_size={self.pool_size}, implicit={self.implicit}, "
            f"compute_dtype={self.compute_dtype}, reduction={self.reduction!r}"
        )
