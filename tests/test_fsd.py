"""Feature-wise Similarity Distillation: the implicit Gram form against the explicit N x N form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses.base import DistillationInputs
from lightvessel_monai.losses.fsd import FeatureSimilarityDistillation, fsd_pair_loss, naive_similarity_loss
from lightvessel_monai.taps import FeatureTaps


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-12)


def _features(spatial_dims: int, ct: int, cs: int, enc_size: int, dec_size: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def rand(c: int, s: int) -> torch.Tensor:
        return torch.randn(batch, c, *([s] * spatial_dims), generator=g)

    return rand(ct, enc_size), rand(ct, dec_size), rand(cs, enc_size), rand(cs, dec_size)


# (teacher channels, student channels, encoder size, decoder size, grid, pool_size)
CASES = [
    (4, 4, 6, 6, "largest", None),
    (6, 3, 6, 6, "largest", None),  # teacher and student channels differ
    (5, 2, 8, 4, "largest", None),  # encoder and decoder sizes differ: decoder upsampled
    (5, 2, 8, 4, "smallest", None),  # ... or encoder downsampled
    (3, 7, 6, 3, "largest", 2),  # node pooling after resizing
    (4, 2, 5, 7, (6, 6, 6), 3),  # explicit grid (tuple trimmed to the spatial dims below)
]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("ct,cs,enc_size,dec_size,grid,pool_size", CASES)
def test_implicit_matches_naive(spatial_dims, ct, cs, enc_size, dec_size, grid, pool_size):
    if isinstance(grid, tuple):
        grid = grid[:spatial_dims]
    feats = _features(spatial_dims, ct, cs, enc_size, dec_size)
    implicit = fsd_pair_loss(*feats, grid=grid, pool_size=pool_size)
    naive = naive_similarity_loss(*feats, grid=grid, pool_size=pool_size)
    assert implicit.ndim == 0 and implicit.dtype == torch.float32
    assert float(naive) > 1e-3  # a non-trivial value is compared
    assert _rel_err(implicit, naive) < 1e-5


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_float64_compute_dtype(spatial_dims):
    feats = _features(spatial_dims, 6, 3, 6, 4, seed=1)
    ref = naive_similarity_loss(*(f.double() for f in feats))
    for dtype in (torch.float64, "float64"):
        out = fsd_pair_loss(*feats, compute_dtype=dtype)
        assert out.dtype == torch.float32  # returned in the inputs' dtype
        assert _rel_err(out, ref) < 1e-6
    out64 = fsd_pair_loss(*(f.double() for f in feats))
    assert out64.dtype == torch.float64 and _rel_err(out64, ref) < 1e-12


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_zero_for_identical_taps(spatial_dims):
    enc, dec, _, _ = _features(spatial_dims, 5, 5, 6, 3, seed=2)
    loss = fsd_pair_loss(enc, dec, enc.clone(), dec.clone())
    assert 0.0 <= float(loss) <= 1e-7


def test_hand_computed_values():
    # C=1: normalisation keeps signs only. e_t=[1,-1], d_t=[1,1]  -> S_t=[[1,1],[-1,-1]];
    # e_s=[1,1], d_s=[-1,1] -> S_s=[[-1,1],[-1,1]]; diff=[[2,0],[0,-2]]; mean of squares = 8/4 = 2.
    def t(*values: float) -> torch.Tensor:  # one channel, two positions
        return torch.tensor(values).reshape(1, 1, 1, 2)

    feats = (t(3.0, -2.0), t(5.0, 4.0), t(2.0, 1.0), t(-1.0, 7.0))
    assert float(fsd_pair_loss(*feats)) == pytest.approx(2.0, abs=1e-6)
    assert float(naive_similarity_loss(*feats)) == pytest.approx(2.0, abs=1e-6)

    # C=2 teacher, C=1 student. Teacher positions e=(0.6,0.8),(1,0); d=(0,1),(1,0)
    # -> S_t=[[0.8,0.6],[0,1]]; student e=[1,1], d=[1,1] -> S_s=ones; diff=[[-0.2,-0.4],[-1,0]]
    # -> (0.04 + 0.16 + 1) / 4 = 0.3.
    te = torch.tensor([[3.0, 1.0], [4.0, 0.0]]).reshape(1, 2, 1, 2)
    td = torch.tensor([[0.0, 2.0], [5.0, 0.0]]).reshape(1, 2, 1, 2)
    se, sd = t(2.0, 3.0), t(1.0, 4.0)
    assert float(fsd_pair_loss(te, td, se, sd)) == pytest.approx(0.3, abs=1e-6)

    # reductions over pairs: "sum" adds the pair losses, "mean" averages them
    inputs = _inputs({"a": feats[0], "b": feats[1], "c": te, "d": td}, {"a": feats[2], "b": feats[3], "c": se, "d": sd})
    total = FeatureSimilarityDistillation([["a", "b"], ["c", "d"]])(inputs)
    mean = FeatureSimilarityDistillation([["a", "b"], ["c", "d"]], reduction="mean")(inputs)
    assert float(total) == pytest.approx(2.3, abs=1e-6)
    assert float(mean) == pytest.approx(1.15, abs=1e-6)


def test_autocast_bfloat16_runs_in_float32():
    feats = [f.bfloat16() for f in _features(2, 4, 2, 8, 4, seed=3)]
    ref = naive_similarity_loss(*(f.float() for f in feats))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsd_pair_loss(*feats)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < 1e-5


def _inputs(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> DistillationInputs:
    some = next(iter(student.values()))
    return DistillationInputs(
        image=some,
        label=some,
        student_pred=some,
        teacher_pred=None,
        student_features=student,
        teacher_features=teacher,
    )


def _tiny_net(spatial_dims: int, width: int) -> nn.Sequential:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    # stride 2 in the second layer: encoder and decoder taps differ in size, which exercises resizing
    return nn.Sequential(conv(1, width, 3, padding=1), nn.ReLU(), conv(width, width, 3, stride=2, padding=1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("implicit", [True, False])
def test_gradient_reaches_student_only(spatial_dims, implicit):
    torch.manual_seed(0)
    teacher, student = _tiny_net(spatial_dims, 6), _tiny_net(spatial_dims, 3)
    taps = {"enc": "0", "dec": "2"}
    teacher_taps, student_taps = FeatureTaps(teacher, taps), FeatureTaps(student, taps)
    image = torch.randn(2, 1, *([8] * spatial_dims))
    teacher(image)  # teacher parameters keep requires_grad: the distiller itself must stop the gradient
    student(image)
    fsd = FeatureSimilarityDistillation([["enc", "dec"]], pool_size=2, implicit=implicit)
    assert fsd.required_taps == ("enc", "dec")
    loss = fsd(_inputs(teacher_taps.features, student_taps.features))
    loss.backward()
    assert float(loss.detach()) > 0
    for name, param in student.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
    for name, param in teacher.named_parameters():
        assert param.grad is None, name


def test_implicit_and_naive_gradients_agree():
    feats = list(_features(2, 4, 3, 6, 3, seed=4))
    grads = []
    for fn in (fsd_pair_loss, naive_similarity_loss):
        student = [f.clone().requires_grad_(True) for f in feats[2:]]
        fn(feats[0], feats[1], *student).backward()
        grads.append(torch.cat([s.grad.flatten() for s in student]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_missing_tap_raises_config_key_error():
    feats = _features(2, 2, 2, 4, 4)
    fsd = FeatureSimilarityDistillation([["enc", "dec"]])
    with pytest.raises(ConfigKeyError, match=r"teacher tap 'dec'.*available teacher taps: enc, other"):
        fsd(_inputs({"enc": feats[0], "other": feats[1]}, {"enc": feats[2], "dec": feats[3]}))
    with pytest.raises(ConfigKeyError, match=r"student tap 'enc'.*available student taps: dec"):
        fsd(_inputs({"enc": feats[0], "dec": feats[1]}, {"dec": feats[3]}))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pairs": []}, "non-empty"),
        ({"pairs": "enc"}, "non-empty"),
        ({"pairs": [["enc"]]}, "two tap names"),
        ({"pairs": [["enc", "dec", "x"]]}, "two tap names"),
        ({"pairs": ["ab"]}, "two tap names"),
        ({"pairs": [["enc", 3]]}, "two tap names"),
        ({"pairs": [["e", "d"]], "grid": "biggest"}, "grid"),
        ({"pairs": [["e", "d"]], "grid": (0, 4)}, "grid"),
        ({"pairs": [["e", "d"]], "grid": ()}, "grid"),
        ({"pairs": [["e", "d"]], "pool_size": 0}, "pool_size"),
        ({"pairs": [["e", "d"]], "pool_size": 1.5}, "pool_size"),
        ({"pairs": [["e", "d"]], "pool_size": True}, "pool_size"),
        ({"pairs": [["e", "d"]], "reduction": "max"}, "reduction"),
        ({"pairs": [["e", "d"]], "compute_dtype": "int32"}, "compute_dtype"),
        ({"pairs": [["e", "d"]], "compute_dtype": "float128x"}, "compute_dtype"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        FeatureSimilarityDistillation(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_feature_shapes_raise_value_error():
    te, td, se, sd = _features(2, 4, 2, 6, 6)
    with pytest.raises(ValueError, match="equal encoder and decoder channels within the teacher"):
        fsd_pair_loss(te, td[:, :3], se, sd)
    with pytest.raises(ValueError, match="batch size and spatial dims"):
        fsd_pair_loss(te, td, se[:1], sd)
    with pytest.raises(ValueError, match="spatial dims"):
        fsd_pair_loss(te, td, se, sd, grid=(6, 6, 6))
    with pytest.raises(ValueError, match="pool_size 8 is larger"):
        fsd_pair_loss(te, td, se, sd, pool_size=8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_fast_channel_normalisation_equals_f_normalize_with_its_gradient(spatial_dims):
    import torch.nn.functional as F

    from lightvessel_monai.losses._common import channel_l2_normalise

    torch.manual_seed(0)
    shape = (2, 5, 6, 7) if spatial_dims == 2 else (2, 5, 4, 6, 3)
    x = torch.randn(shape, dtype=torch.float64)
    x[0, :, 1, 2] = 0.0  # an all-zero channel vector: both clamp at eps
    x[1, :, 0, 0] = 1e-14  # a tiny one, below eps: the clamp branch of the gradient
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    weight = torch.randn(shape, dtype=torch.float64)
    (channel_l2_normalise(a, 1e-12) * weight).sum().backward()
    (F.normalize(b, p=2.0, dim=1, eps=1e-12) * weight).sum().backward()
    torch.testing.assert_close(channel_l2_normalise(x, 1e-12), F.normalize(x, p=2.0, dim=1, eps=1e-12))
    torch.testing.assert_close(a.grad, b.grad)
