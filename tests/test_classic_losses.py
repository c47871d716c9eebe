"""Classic distillers (KD, AT, CWD, SKD) against hand-computed values and naive references; the method overlays."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from torch import nn

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.handlers import AdversarialUpdateHandler
from lightvessel_monai.losses import (
    AttentionTransfer,
    ChannelWiseDistillation,
    DistillationInputs,
    DistillationMethod,
    HolisticDistillation,
    KnowledgeDistillation,
    PairwiseDistillation,
    attention_transfer_loss,
    channel_wise_divergence,
    parse_terms,
    student_parameters,
)
from lightvessel_monai.losses._common import class_balanced_weights
from lightvessel_monai.networks import SimilarityDiscriminator
from lightvessel_monai.taps import FeatureTaps

from conftest import KL_HAND, REPO
from conftest import distillation_inputs as _inputs
from conftest import leaf as _leaf

# ----------------------------------------------------------------------------------------------------- KD


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_hand_computed(temperature):
    # pixel 0: teacher p = [0.75, 0.25] at temperature T, student uniform; pixel 1: both uniform (KL 0)
    teacher = torch.tensor([[math.log(3.0) * temperature, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    student = torch.zeros(1, 2, 1, 2)
    loss = KnowledgeDistillation(temperature=temperature)(_inputs(student, teacher))
    torch.testing.assert_close(loss, torch.tensor(KL_HAND / 2 * temperature**2))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_kd_zero_for_identical_and_gradients(spatial_dims):
    kd = KnowledgeDistillation()
    logits = torch.randn(2, 3, *([4] * spatial_dims))
    assert float(kd(_inputs(logits, logits.clone()))) == pytest.approx(0.0, abs=1e-6)
    student, teacher = _leaf(2, 3, *([4] * spatial_dims)), _leaf(2, 3, *([4] * spatial_dims))
    loss = kd(_inputs(student, teacher))
    loss.backward()
    assert loss > 0 and student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_errors():
    with pytest.raises(ValueError, match="teacher prediction"):
        KnowledgeDistillation()(_inputs(torch.zeros(1, 2, 2, 2), None))
    with pytest.raises(ValueError, match="temperature"):
        KnowledgeDistillation(temperature=0)
    with pytest.raises(ValueError, match="KD: set exactly one of softmax=True and sigmoid=True"):
        KnowledgeDistillation(sigmoid=True)
    with pytest.raises(ValueError, match="set exactly one"):
        KnowledgeDistillation(softmax=False)


def test_class_balanced_weights_hand_computed():
    # image 0: 1 vessel pixel of 4 -> vessel 1/1, background 1/3; image 1: no vessel -> background 1/4 everywhere
    label = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    w = class_balanced_weights(label, 2)
    expected = torch.tensor([[[1.0, 1 / 3], [1 / 3, 1 / 3]], [[0.25, 0.25], [0.25, 0.25]]])
    torch.testing.assert_close(w, expected)
    # one-hot labels give the same weights; every present class sums to 1 per image
    torch.testing.assert_close(class_balanced_weights(torch.cat([1 - label, label], dim=1), 2), expected)
    assert w[0][label[0, 0] == 1].sum() == pytest.approx(1.0) and w[0][label[0, 0] == 0].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_kd_class_balanced_against_naive_loop(spatial_dims):
    torch.manual_seed(0)
    size = [3] * spatial_dims
    student, teacher = _leaf(2, 2, *size), torch.randn(2, 2, *size)
    label = (torch.rand(2, 1, *size) < 0.2).float()
    label[0].view(-1)[0] = 1.0  # at least one vessel pixel in image 0
    loss = KnowledgeDistillation(temperature=2.0, class_balanced=True)(_inputs(student, teacher, label=label))
    # naive: per image and class, the mean KL over that class's pixels; then the mean over the (image, class) pairs
    # present, times T^2 -- the same as the weighted mean with weights 1 / n_{b,c}
    kl = F.kl_div(F.log_softmax(student / 2, 1), F.log_softmax(teacher / 2, 1), log_target=True, reduction="none")
    kl = kl.sum(1)
    numerator, denominator = 0.0, 0
    for b in range(2):
        for c in (0.0, 1.0):
            mask = label[b, 0] == c
            if mask.any():
                numerator += float(kl[b][mask].mean())
                denominator += 1
    assert float(loss.detach()) == pytest.approx(numerator / denominator * 4.0, rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # with both classes equally frequent in each image, the balanced mean is the plain mean
    half = torch.zeros(2, 1, 2, 2)
    half[:, :, 0] = 1.0
    s, t = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    balanced = KnowledgeDistillation(class_balanced=True)(_inputs(s, t, label=half))
    torch.testing.assert_close(balanced, KnowledgeDistillation()(_inputs(s, t, label=half)))


def test_kd_class_balanced_errors():
    with pytest.raises(ValueError, match="class_balanced needs a multi-class head"):
        KnowledgeDistillation(softmax=False, sigmoid=True, class_balanced=True)
    kd = KnowledgeDistillation(class_balanced=True)
    with pytest.raises(ValueError, match=r"label size \(4, 4\) differs from the logits' \(2, 2\)"):
        kd(_inputs(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), label=torch.zeros(1, 1, 4, 4)))


# ----------------------------------------------------------------------------------------------------- AT


def _two_position_features():
    # teacher: channels [2, 0] and [0, 0]; student: channels [2, 1] and [0, 1] over two positions
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    student = torch.tensor([[2.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    return teacher, student


def test_at_hand_computed():
    teacher, student = _two_position_features()
    # p = 2: mean_c F^2 = [2, 1] -> [2, 1]/sqrt(5) for the student, [1, 0] for the teacher; mean over 2 positions
    at = AttentionTransfer(["enc1"])
    loss = at(_inputs(sf={"enc1": student}, tf={"enc1": teacher}))
    torch.testing.assert_close(loss, torch.tensor(1 - 2 / math.sqrt(5)))
    # "sum" over positions doubles it; summing two identical pairs doubles it again
    loss = AttentionTransfer(["enc1", ["enc1", "enc1"]], position_reduction="sum")(
        _inputs(sf={"enc1": student}, tf={"enc1": teacher})
    )
    torch.testing.assert_close(loss, torch.tensor(4 * (1 - 2 / math.sqrt(5))))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_at_resizes_student_map_to_teacher_grid(spatial_dims):
    teacher, student = torch.randn(2, 6, *([8] * spatial_dims)), torch.randn(2, 3, *([4] * spatial_dims))
    loss = attention_transfer_loss(teacher, student, p=2.0)
    # naive reference: maps, bi/trilinear upsampling, re-normalisation, mean squared difference
    a_t = teacher.pow(2).mean(1).flatten(1)
    a_t = a_t / a_t.norm(dim=1, keepdim=True)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    a_s = F.interpolate(student.pow(2).mean(1, keepdim=True), size=teacher.shape[2:], mode=mode, align_corners=False)
    a_s = a_s.flatten(1) / a_s.flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(loss, (a_s - a_t).pow(2).mean())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_at_zero_for_identical_and_gradients(spatial_dims):
    at = AttentionTransfer(["enc1", "dec1"])
    f = torch.randn(2, 4, *([6] * spatial_dims))
    g = torch.randn(2, 4, *([3] * spatial_dims))
    zero = at(_inputs(sf={"enc1": f, "dec1": g}, tf={"enc1": f.clone(), "dec1": g.clone()}))
    assert float(zero) == pytest.approx(0.0, abs=1e-7)
    sf = {"enc1": _leaf(2, 3, *([6] * spatial_dims)), "dec1": _leaf(2, 2, *([3] * spatial_dims))}
    tf = {"enc1": _leaf(2, 5, *([6] * spatial_dims)), "dec1": _leaf(2, 7, *([6] * spatial_dims))}
    loss = at(_inputs(sf=sf, tf=tf))
    loss.backward()
    assert loss > 0
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in sf.values())
    assert all(t.grad is None for t in tf.values())
    assert at.required_teacher_taps == ("enc1", "dec1") and at.trainable_parameters() == []


def test_at_errors():
    with pytest.raises(ConfigKeyError, match="AT needs student tap 'dec1'"):
        AttentionTransfer(["dec1"])(_inputs(sf={"enc1": torch.zeros(1, 1, 2, 2)}, tf={"dec1": torch.zeros(1, 1, 2, 2)}))
    with pytest.raises(ConfigKeyError, match="at least one tap"):
        AttentionTransfer([])
    with pytest.raises(ConfigKeyError, match="pair"):
        AttentionTransfer([["a", "b", "c"]])
    with pytest.raises(ValueError, match="p must be"):
        AttentionTransfer(["enc1"], p=0)
    with pytest.raises(ValueError, match="position_reduction"):
        AttentionTransfer(["enc1"], position_reduction="max")
    with pytest.raises(ValueError, match="same B"):
        attention_transfer_loss(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------------------------------------------- CWD


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cwd_hand_computed_logits(temperature):
    # channel 0: teacher softmax over the 2 positions = [0.75, 0.25], student uniform; channel 1: identical
    teacher = torch.tensor([[math.log(3.0) * temperature, 0.0], [1.0, 2.0]]).reshape(1, 2, 1, 2)
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]]).reshape(1, 2, 1, 2)
    cwd = ChannelWiseDistillation(logits=True, temperature=temperature)
    torch.testing.assert_close(cwd(_inputs(student, teacher)), torch.tensor(KL_HAND / 2 * temperature**2))
    assert list(cwd.adapters) == [] and cwd.trainable_parameters() == []


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cwd_zero_for_identity_adapter_and_logits(spatial_dims):
    f = torch.randn(2, 4, *([4] * spatial_dims))
    logits = torch.randn(2, 2, *([4] * spatial_dims))
    inputs = _inputs(logits, logits.clone(), sf={"dec1": f}, tf={"dec1": f.clone()})
    no_adapter = ChannelWiseDistillation(["dec1"], spatial_dims=spatial_dims, logits=True, adapter=False)
    assert float(no_adapter(inputs)) == pytest.approx(0.0, abs=1e-6)
    identity = ChannelWiseDistillation(["dec1"], {"dec1": 4}, {"dec1": 4}, spatial_dims=spatial_dims)
    with torch.no_grad():
        identity.adapters["dec1"].weight.copy_(torch.eye(4).reshape(4, 4, *([1] * spatial_dims)))
        identity.adapters["dec1"].bias.zero_()
    assert float(identity(inputs).detach()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cwd_adapter_resize_and_gradients(spatial_dims):
    cwd = ChannelWiseDistillation(
        [["t1", "s1"]], student_channels={"s1": 3}, teacher_channels={"t1": 5}, spatial_dims=spatial_dims
    )
    adapter = cwd.adapters["s1_to_t1"]
    assert isinstance(adapter, nn.Conv2d if spatial_dims == 2 else nn.Conv3d) and adapter.kernel_size[0] == 1
    student, teacher = _leaf(2, 3, *([4] * spatial_dims)), _leaf(2, 5, *([8] * spatial_dims))
    loss = cwd(_inputs(sf={"s1": student}, tf={"t1": teacher}))
    # reference: adapter, upsampling to the teacher's grid, per-channel spatial softmax KL x T^2, mean over B*C
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    aligned = F.interpolate(adapter(student), size=teacher.shape[2:], mode=mode, align_corners=False)
    log_ps = F.log_softmax(aligned.flatten(2) / 4, dim=-1)
    log_pt = F.log_softmax(teacher.detach().flatten(2) / 4, dim=-1)
    ref = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * 16
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    # the adapter trains with the student
    assert {id(p) for p in cwd.trainable_parameters()} == {id(p) for p in adapter.parameters()}
    net = nn.Conv2d(1, 1, 1)
    assert len(student_parameters(net, {"cwd": {"loss": cwd}})) == 2 + 2


def test_cwd_errors():
    with pytest.raises(ConfigKeyError, match="nothing to distil"):
        ChannelWiseDistillation()
    with pytest.raises(ConfigKeyError, match="student_channels has no entry for tap 'dec1'"):
        ChannelWiseDistillation(["dec1"], {"enc1": 4}, {"dec1": 4})
    with pytest.raises(ConfigKeyError, match="positive int"):
        ChannelWiseDistillation(["dec1"], {"dec1": 0}, {"dec1": 4})
    with pytest.raises(ValueError, match="spatial_dims"):
        ChannelWiseDistillation(logits=True, spatial_dims=1)
    mismatch = ChannelWiseDistillation(["dec1"], adapter=False)
    with pytest.raises(ValueError, match="use adapter=True"):
        mismatch(_inputs(sf={"dec1": torch.zeros(1, 3, 4, 4)}, tf={"dec1": torch.zeros(1, 4, 4, 4)}))
    with pytest.raises(ValueError, match="differ in shape"):
        channel_wise_divergence(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------------- SKD


def _naive_pairwise(teacher: torch.Tensor, student: torch.Tensor, pool: int) -> torch.Tensor:
    """The N x N cosine-similarity matrices, built explicitly."""
    spatial_dims = teacher.ndim - 2
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    student = F.interpolate(student, size=teacher.shape[2:], mode=mode, align_corners=False)
    pool_fn = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    sims = []
    for x in (teacher, student):
        nodes = F.normalize(pool_fn(x, pool, pool), dim=1).flatten(2)  # (B, C, N)
        sims.append(torch.einsum("bci,bcj->bij", nodes, nodes))
    n = sims[0].shape[-1]
    return ((sims[0] - sims[1]) ** 2).sum(dim=(1, 2)).mean() / n**2


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("pool", [1, 2])
def test_skd_pairwise_matches_naive(spatial_dims, pool):
    teacher, student = torch.randn(2, 6, *([8] * spatial_dims)), _leaf(2, 3, *([4] * spatial_dims))
    skd = PairwiseDistillation("dec1", pool_size=pool)
    loss = skd(_inputs(sf={"dec1": student}, tf={"dec1": teacher}))
    ref = _naive_pairwise(teacher, student.detach(), pool)
    assert float(ref) > 1e-3
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_skd_pairwise_zero_and_gradients(spatial_dims):
    skd = PairwiseDistillation(["t_dec", "s_dec"], pool_size=2)
    assert skd.required_teacher_taps == ("t_dec",) and skd.required_student_taps == ("s_dec",)
    f = torch.randn(2, 4, *([4] * spatial_dims))
    assert float(skd(_inputs(sf={"s_dec": f}, tf={"t_dec": f.clone()}))) == pytest.approx(0.0, abs=1e-6)
    student, teacher = _leaf(2, 3, *([4] * spatial_dims)), _leaf(2, 5, *([4] * spatial_dims))
    loss = skd(_inputs(sf={"s_dec": student}, tf={"t_dec": teacher}))
    loss.backward()
    assert loss > 0 and student.grad.abs().sum() > 0 and teacher.grad is None


def test_skd_pairwise_errors():
    with pytest.raises(ValueError, match="pool_size"):
        PairwiseDistillation("dec1", pool_size=0)
    with pytest.raises(ConfigKeyError, match="tap"):
        PairwiseDistillation(["a", "b", "c"])
    with pytest.raises(ConfigKeyError, match="SKD pair-wise needs teacher tap 'dec1'"):
        PairwiseDistillation("dec1")(_inputs(sf={"dec1": torch.zeros(1, 1, 4, 4)}))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_skd_holistic_critic_map_and_student_term(spatial_dims):
    size = (8,) * spatial_dims
    critic = SimilarityDiscriminator(spatial_dims, in_channels=1 + 2, channels=(4, 8))
    holistic = HolisticDistillation(critic)
    image, pred = torch.randn(2, 1, *size), _leaf(2, 2, *size)
    cmap = holistic.critic_map(pred, torch.zeros(2, 1, *size), image)
    torch.testing.assert_close(cmap, torch.cat([image, torch.softmax(pred, 1)], 1))
    teacher_pred = _leaf(2, 2, *size)
    loss = holistic(_inputs(pred, teacher_pred, image=image))
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert teacher_pred.grad is None
    assert all(p.grad is None for p in critic.parameters()), "the student term must not write critic gradients"
    assert all(p.requires_grad for p in critic.parameters())
    assert holistic.trainable_parameters() == []  # the critic is trained by its own handler


def test_skd_holistic_critic_step_changes_only_the_critic():
    critic = SimilarityDiscriminator(2, in_channels=3, channels=(4,))
    holistic = HolisticDistillation(critic)
    handler = AdversarialUpdateHandler(holistic, torch.optim.Adam(critic.parameters(), lr=1e-2))
    image, student_pred, teacher_pred = torch.randn(2, 1, 8, 8), _leaf(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    before = [p.detach().clone() for p in critic.parameters()]
    real, fake = holistic.critic_inputs(torch.zeros(2, 1, 8, 8), teacher_pred, student_pred.detach(), image=image)
    assert real.shape == fake.shape == (2, 3, 8, 8)
    handler.step(real, fake)
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters(), strict=True))
    assert student_pred.grad is None


def test_skd_holistic_errors():
    holistic = HolisticDistillation(SimilarityDiscriminator(2, in_channels=3, channels=(4,)))
    with pytest.raises(ValueError, match="needs the input image"):
        holistic.critic_map(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), None)
    with pytest.raises(ValueError, match="same grid"):
        holistic.critic_map(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="SKD holistic: set exactly one"):
        HolisticDistillation(nn.Identity(), softmax=False)


# ----------------------------------------------------------------------------------------------- overlays

TRAIN = str(REPO / "bundle" / "configs" / "train.json")
DATA_3D = str(REPO / "configs" / "data" / "synthetic_3d.json")
SMALL_PATCH = {2: [32, 32], 3: [32, 32, 16]}  # BasicUNet divides by 16 and needs > 1 voxel at its bottom


def build_overlay(method: str, spatial_dims: int, tmp_path) -> tuple[ConfigParser, dict, DistillationInputs]:
    """Parse train.json (+ the 3D data overlay) + a method overlay and run one forward pass of both networks
    on a random patch.

    Only the parts the trainer needs are built (terms, loss, optimiser, handlers): no dataset, no training.
    """
    files = [TRAIN] + ([DATA_3D] if spatial_dims == 3 else []) + [str(REPO / "configs" / "methods" / f"{method}.json")]
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(tmp_path)
    parser["device"] = "$torch.device('cpu')"
    assert parser["spatial_dims"] == spatial_dims
    # a smaller patch keeps the test fast on CPU (2 cores); every component reads it from "patch_size"
    parser["patch_size"] = SMALL_PATCH[spatial_dims]
    network, teacher = parser.get_parsed_content("network"), parser.get_parsed_content("teacher")
    student_taps, teacher_taps = parser.get_parsed_content("student_taps"), parser.get_parsed_content("teacher_taps")
    terms = parse_terms(parser.get_parsed_content("distillation"))
    DistillationMethod(parser.get_parsed_content("distillation")).check_taps(network, student_taps, side="student")
    DistillationMethod(parser.get_parsed_content("distillation")).check_taps(teacher, teacher_taps, side="teacher")
    s_taps, t_taps = FeatureTaps(network, student_taps), FeatureTaps(teacher, teacher_taps)
    image = torch.randn(1, parser["in_channels"], *parser["patch_size"])
    label = (image > 0.5).float()
    teacher.eval()
    with torch.no_grad():
        teacher_pred = teacher(image)
    inputs = DistillationInputs(
        image=image,
        label=label,
        student_pred=network(image),
        teacher_pred=teacher_pred,
        student_features=s_taps.features,
        teacher_features=t_taps.features,
        iteration=1,
    )
    return parser, terms, inputs


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", ["kd", "at", "cwd", "skd", "emkd"])
def test_overlay_builds_and_runs(method, spatial_dims, tmp_path):
    parser, terms, inputs = build_overlay(method, spatial_dims, tmp_path)
    distillers = {name: term.loss for name, term in terms.items()}
    assert terms and all(n.startswith(method) for n in terms)
    assert parser.get_parsed_content("use_teacher") is True
    total = sum(term.weight * term.loss(inputs) for term in terms.values())
    assert torch.isfinite(total)
    total.backward()
    # the student optimiser holds the network and every adapter; every adapter got a gradient
    optimizer = parser.get_parsed_content("optimizer")
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for distiller in distillers.values():
        for p in distiller.trainable_parameters():
            assert id(p) in in_optimizer and p.grad is not None
    handlers = [h for term in terms.values() for h in term.handlers]
    if method == "skd":
        assert terms["skd_holistic"].handlers == handlers
        assert len(handlers) == 1 and isinstance(handlers[0], AdversarialUpdateHandler)
        assert handlers[0].adversarial is distillers["skd_holistic"]
        critic_params = {id(p) for p in handlers[0].optimizer.param_groups[0]["params"]}
        assert critic_params == {id(p) for p in distillers["skd_holistic"].discriminator.parameters()}
        assert not critic_params & in_optimizer
        assert all(p.grad is None for p in distillers["skd_holistic"].discriminator.parameters())
    else:
        assert handlers == []
