"""EMKD (PMD, IMD, RAD) against hand-computed values and naive references; the emkd overlay's loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss

from lightvessel_monai.compare.runs import build_parser, split_variant
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses import AttentionTransfer, KnowledgeDistillation, parse_terms
from lightvessel_monai.losses.emkd import (
    ImportanceMapDistillation,
    PredictionMapDistillation,
    RegionAffinityDistillation,
    region_affinity_loss,
)

from conftest import KL_HAND, REPO
from conftest import distillation_inputs as _inputs
from conftest import leaf as _leaf

# ---------------------------------------------------------------------------------------------------- PMD


def test_pmd_shares_kd_and_defaults_to_t4():
    pmd = PredictionMapDistillation()
    assert isinstance(pmd, KnowledgeDistillation) and pmd.temperature == 4.0


def test_pmd_hand_computed_softmax():
    # at T = 4 the teacher's pixel 0 is [0.75, 0.25], the student's uniform; pixel 1 agrees
    teacher = torch.tensor([[4 * math.log(3.0), 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    loss = PredictionMapDistillation()(_inputs(torch.zeros(1, 2, 1, 2), teacher))
    torch.testing.assert_close(loss, torch.tensor(KL_HAND / 2 * 16))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pmd_sigmoid_head(spatial_dims):
    # binary head (B, 1, ...): teacher sigmoid(z / 2) = 0.75 everywhere, student 0.5: Bernoulli KL = KL_HAND
    size = (2,) * spatial_dims
    teacher = torch.full((1, 1, *size), 2 * math.log(3.0))
    student = torch.zeros(1, 1, *size, requires_grad=True)
    pmd = PredictionMapDistillation(temperature=2.0, softmax=False, sigmoid=True)
    loss = pmd(_inputs(student, teacher))
    torch.testing.assert_close(loss, torch.tensor(KL_HAND * 4))
    loss.backward()
    assert student.grad.abs().sum() > 0
    logits = torch.randn(2, 1, *size)
    assert float(pmd(_inputs(logits, logits.clone()))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pmd_zero_and_gradients(spatial_dims):
    pmd = PredictionMapDistillation()
    logits = torch.randn(2, 3, *([4] * spatial_dims))
    assert float(pmd(_inputs(logits, logits.clone()))) == pytest.approx(0.0, abs=1e-6)
    student, teacher = _leaf(2, 3, *([4] * spatial_dims)), _leaf(2, 3, *([4] * spatial_dims))
    pmd(_inputs(student, teacher)).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_pmd_errors():
    with pytest.raises(ValueError, match="EMKD PMD needs a teacher prediction"):
        PredictionMapDistillation()(_inputs(torch.zeros(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="EMKD PMD temperature"):
        PredictionMapDistillation(temperature=-1)
    with pytest.raises(ValueError, match="differ in shape"):
        PredictionMapDistillation()(_inputs(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)))


# ---------------------------------------------------------------------------------------------------- IMD


def test_imd_hand_computed():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    student = torch.tensor([[2.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    imd = ImportanceMapDistillation(["low", "high"])
    assert isinstance(imd, AttentionTransfer)  # the attention machinery is shared with AT
    # p = 4: mean_c F^4 = [8, 1] -> [8, 1]/sqrt(65) vs [1, 0]; summed over positions; level "high" agrees (0)
    loss = imd(_inputs(sf={"low": student, "high": teacher}, tf={"low": teacher, "high": teacher.clone()}))
    torch.testing.assert_close(loss, torch.tensor((2 - 16 / math.sqrt(65)) / 2))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_imd_resize_zero_and_gradients(spatial_dims):
    imd = ImportanceMapDistillation(["enc1", "enc2"])
    f1, f2 = torch.randn(2, 4, *([8] * spatial_dims)), torch.randn(2, 6, *([4] * spatial_dims))
    assert float(imd(_inputs(sf={"enc1": f1, "enc2": f2}, tf={"enc1": f1, "enc2": f2}))) == pytest.approx(0, abs=1e-7)
    # student at half the teacher's resolution, fewer channels
    sf = {"enc1": _leaf(2, 2, *([4] * spatial_dims)), "enc2": _leaf(2, 3, *([2] * spatial_dims))}
    tf = {"enc1": _leaf(2, 4, *([8] * spatial_dims)), "enc2": _leaf(2, 6, *([4] * spatial_dims))}
    loss = imd(_inputs(sf=sf, tf=tf))
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    ref = 0.0
    for name in ("enc1", "enc2"):
        a_t = tf[name].detach().pow(4).mean(1).flatten(1)
        a_t = a_t / a_t.norm(dim=1, keepdim=True)
        # the student's importance map (not its feature) is resized to the teacher's grid, then re-normalised
        a_s = F.interpolate(
            sf[name].detach().pow(4).mean(1, keepdim=True), size=tf[name].shape[2:], mode=mode, align_corners=False
        ).flatten(1)
        a_s = a_s / a_s.norm(dim=1, keepdim=True)
        ref = ref + (a_s - a_t).pow(2).sum(1).mean() / 2
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert all(t.grad.abs().sum() > 0 for t in sf.values()) and all(t.grad is None for t in tf.values())


def test_imd_errors():
    with pytest.raises(ConfigKeyError, match="EMKD IMD needs teacher tap 'enc2'"):
        ImportanceMapDistillation()(_inputs(sf={"enc1": torch.ones(1, 1, 2, 2)}, tf={"enc1": torch.ones(1, 1, 2, 2)}))
    with pytest.raises(ValueError, match="EMKD IMD reduction"):
        ImportanceMapDistillation(reduction="max")


# ---------------------------------------------------------------------------------------------------- RAD


def _row(values) -> torch.Tensor:
    """A (1, C, 1, N) feature from per-position vectors."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, len(values[0]), 1, len(values))


def test_rad_hand_computed_three_classes():
    label = torch.tensor([0, 0, 1, 2]).reshape(1, 1, 1, 4)
    # teacher prototypes [1, 0], [0, 1], [1, 1]: cos01 = 0, cos02 = cos12 = 1/sqrt(2)
    teacher = _row([[1, 0], [1, 0], [0, 1], [1, 1]])
    # student prototypes [1, 0, 0], [1, 0, 0], [0, 0, 1]: cos01 = 1, cos02 = cos12 = 0
    student = _row([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]])
    rad = RegionAffinityDistillation(["f"], num_classes=3)
    loss = rad(_inputs(sf={"f": student}, tf={"f": teacher}, label=label))
    torch.testing.assert_close(loss, torch.tensor((1 + 0.5 + 0.5) / 3))
    # a one-hot label gives the same value
    onehot = F.one_hot(label[:, 0], 3).movedim(-1, 1)
    torch.testing.assert_close(rad(_inputs(sf={"f": student}, tf={"f": teacher}, label=onehot)), loss)


def test_rad_absent_classes_and_single_class_samples():
    label = torch.tensor([[0, 0, 0, 2], [1, 1, 1, 1]]).reshape(2, 1, 1, 4)  # sample 1 has a single class
    teacher = torch.cat([_row([[1, 0], [1, 0], [1, 0], [0, 1]])] * 2)  # cos02 = 0
    student = torch.cat([_row([[1, 1], [1, 1], [1, 1], [0, 1]])] * 2)  # cos02 = 1/sqrt(2)
    loss = RegionAffinityDistillation(["f"], num_classes=3)(_inputs(sf={"f": student}, tf={"f": teacher}, label=label))
    torch.testing.assert_close(loss, torch.tensor((0.5 + 0.0) / 2))  # one pair in sample 0; sample 1 gives 0


def test_rad_area_resize_keeps_thin_structures():
    label = torch.tensor([0, 1, 0, 0]).reshape(1, 1, 1, 4)  # a one-pixel "vessel"
    onehot = F.one_hot(label[:, 0], 2).movedim(-1, 1).float()
    teacher = _row([[1, 0], [0, 1]])  # features at half resolution
    student = _row([[0, 1], [0, 1]])
    # area: cell 0 is half background, half vessel; cell 1 background: teacher prototypes [1/3, 2/3] and [1, 0]
    loss = region_affinity_loss(teacher, student, onehot, label_resize="area")
    torch.testing.assert_close(loss, torch.tensor((1 - 1 / math.sqrt(5)) ** 2))
    # nearest sampling misses the vessel: a single class is left and the term vanishes
    assert float(region_affinity_loss(teacher, student, onehot, label_resize="nearest")) == 0.0


def _naive_rad(teacher, student, onehot):
    """Loops over samples and class pairs."""
    losses = []
    for b in range(onehot.shape[0]):
        protos = {}
        for name, feat in (("t", teacher), ("s", student)):
            m = F.interpolate(onehot[b : b + 1].float(), size=feat.shape[2:], mode="area")[0]
            protos[name] = [
                (feat[b] * m[k]).flatten(1).sum(1) / m[k].sum() if m[k].sum() > 0 else None
                for k in range(onehot.shape[1])
            ]
        present = [k for k in range(onehot.shape[1]) if protos["t"][k] is not None and protos["s"][k] is not None]
        terms = [
            (
                F.cosine_similarity(protos["s"][k], protos["s"][j], dim=0)
                - F.cosine_similarity(protos["t"][k], protos["t"][j], dim=0)
            )
            ** 2
            for i, k in enumerate(present)
            for j in present[i + 1 :]
        ]
        losses.append(torch.stack(terms).mean() if terms else torch.tensor(0.0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rad_matches_naive_and_gradients(spatial_dims):
    label = torch.randint(0, 3, (3, 1, *([8] * spatial_dims)))
    label[2] = 0  # one sample with the background only
    teacher, student = _leaf(3, 6, *([4] * spatial_dims)), _leaf(3, 2, *([2] * spatial_dims))
    rad = RegionAffinityDistillation(["enc1", "enc2"], num_classes=3)
    sf, tf = {"enc1": student, "enc2": student * 2}, {"enc1": teacher, "enc2": teacher + 1}
    loss = rad(_inputs(sf=sf, tf=tf, label=label))
    onehot = F.one_hot(label[:, 0], 3).movedim(-1, 1)
    ref = (_naive_rad(teacher.detach(), student.detach(), onehot) + _naive_rad(teacher + 1, student * 2, onehot)) / 2
    assert float(ref.detach()) > 1e-4
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-7)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    same = rad(_inputs(sf={"enc1": teacher, "enc2": teacher}, tf={"enc1": teacher, "enc2": teacher}, label=label))
    assert float(same) == pytest.approx(0.0, abs=1e-7)


def test_rad_errors():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        RegionAffinityDistillation(num_classes=1)
    with pytest.raises(ValueError, match="label_resize"):
        RegionAffinityDistillation(label_resize="linear")
    with pytest.raises(ConfigKeyError, match="EMKD RAD needs student tap 'enc1'"):
        RegionAffinityDistillation()(_inputs(tf={"enc1": torch.ones(1, 1, 2, 2)}))
    with pytest.raises(ValueError, match="label has 3 channels"):
        RegionAffinityDistillation(["f"], num_classes=2)(
            _inputs(sf={"f": torch.ones(1, 1, 2, 2)}, tf={"f": torch.ones(1, 1, 2, 2)}, label=torch.zeros(1, 3, 2, 2))
        )


# ------------------------------------------------------------------------------------------------ overlay


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_emkd_overlay_terms_and_losses(spatial_dims, tmp_path):
    """The default recipe keeps the bundle's Dice + CE (a stated deviation); the paper's focal + Dice is one variant
    away, through the same ``name+KEY=JSON`` path that ``compare`` uses."""
    files = [str(REPO / "bundle" / "configs" / "train.json")]
    files += [str(REPO / "configs" / "data" / "synthetic_3d.json")] if spatial_dims == 3 else []
    files += [str(REPO / "configs" / "methods" / "emkd.json")]
    parser = build_parser(files, {"bundle_root": str(tmp_path)})
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, DiceCELoss) and not isinstance(loss, DiceFocalLoss)
    terms = parse_terms(parser.get_parsed_content("distillation"))
    assert {name: term.weight for name, term in terms.items()} == {"emkd_pmd": 0.1, "emkd_imd": 0.9, "emkd_rad": 0.9}
    distillers = {name: term.loss for name, term in terms.items()}
    assert distillers["emkd_imd"].pairs == [("enc1", "enc1"), ("enc2", "enc2")] and distillers["emkd_imd"].p == 4.0
    assert distillers["emkd_rad"].num_classes == parser["num_classes"]

    name, overrides = split_variant("emkd+loss=@emkd_paper_loss")
    assert name == "emkd" and overrides == {"loss": "@emkd_paper_loss"}
    paper = build_parser(files, {"bundle_root": str(tmp_path), **overrides}).get_parsed_content("loss")
    assert isinstance(paper, DiceFocalLoss) and paper.to_onehot_y and paper.dice.softmax
    pred, label = torch.randn(1, 2, *([8] * spatial_dims)), torch.randint(0, 2, (1, 1, *([8] * spatial_dims)))
    assert torch.isfinite(loss(pred, label)) and torch.isfinite(paper(pred, label))
    assert not torch.isclose(loss(pred, label), paper(pred, label))
