"""GKD: MSAN headers, DCGD, DICD, the SAN's online ACT, the ACT stage's cache and the Fréchet Semantic Distance."""

import gc
import math
import weakref

import pytest
import torch
from ignite.engine import Engine
from monai.networks.nets import BasicUNet, UNet

from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.gkd import (
    DomainInvariantCrossDistillation,
    DualContrastiveGraphDistillation,
    FrechetSemanticDistance,
    GKDSemantics,
    LabelSemanticAutoEncoder,
    SemanticAlignment,
    SemanticDistanceHandler,
    SemanticHeader,
    bottleneck_path,
    bottleneck_size,
    bottleneck_swap,
    contrastive_graph_loss,
    frechet_distance,
    graph_edges,
)
from lightvessel_monai.gkd.alignment import AlignmentConsistencyStage
from lightvessel_monai.losses import DistillationInputs
from lightvessel_monai.taps import FeatureTaps

PATCH = {2: (32, 32), 3: (16, 16, 16)}


def _unet(dims, channels):
    return UNet(dims, 1, 2, channels=channels, strides=[2] * (len(channels) - 1), num_res_units=1)


def _semantics(dims, views=2, autoencoder=True):
    torch.manual_seed(0)
    student, teacher = _unet(dims, [4, 8, 16]), _unet(dims, [8, 16, 32, 48])
    teacher.eval().requires_grad_(False)
    taps = {}
    headers = {}
    for side, net in (("student", student), ("teacher", teacher)):
        path = bottleneck_path(net)
        taps[side] = {"bottleneck": path}
        channels, size = bottleneck_size(net, path, [1, 1, *PATCH[dims]])
        headers[side] = SemanticHeader(dims, channels, size, semantic_dim=16)
    psae = LabelSemanticAutoEncoder(dims, 2, PATCH[dims], 16, channels=(4, 8)) if autoencoder else None
    semantics = GKDSemantics(
        student, teacher, headers["student"], headers["teacher"], taps["student"], taps["teacher"], psae, views=views
    )
    return semantics, student, teacher


def _inputs(semantics, dims, batch=2, seed=1):
    """One trainer step's inputs: the networks run with their bottleneck tapped, as DistillationTrainer does."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, *PATCH[dims], generator=gen)
    label = (image > 0.6).long()
    student, teacher = semantics.network("student"), semantics.network("teacher")
    s_taps = FeatureTaps(student, {"bottleneck": semantics.paths["student"]})
    t_taps = FeatureTaps(teacher, {"bottleneck": semantics.paths["teacher"]})
    pred = student(image)
    with torch.no_grad():
        t_pred = teacher(image)
    inputs = DistillationInputs(image, label, pred, t_pred, dict(s_taps.features), dict(t_taps.features), 1)
    s_taps.remove()
    t_taps.remove()
    return inputs


# ------------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("dims", [2, 3])
def test_semantic_vectors_have_one_entry_per_channel_or_semantic_dim(dims):
    size = (4,) * dims
    header = SemanticHeader(dims, in_channels=6, spatial_size=size)
    x = torch.randn(3, 6, *size)
    assert header.encode(x).shape == (3, 6)
    assert header(x).shape == x.shape
    mapped = SemanticHeader(dims, in_channels=6, spatial_size=size, semantic_dim=5)
    assert mapped.encode(x).shape == (3, 5)
    assert mapped.decode(mapped.encode(x)).shape == x.shape
    # a larger bottleneck (a whole validation image) is pooled to the training grid, and decoded to any size
    big = torch.randn(2, 6, *(8,) * dims)
    assert mapped.encode(big).shape == (2, 5)
    assert mapped.decode(mapped.encode(big), big.shape[2:]).shape == big.shape


def test_the_header_squeezes_each_channel_with_one_shared_mlp():
    header = SemanticHeader(2, in_channels=3, spatial_size=(2, 2))
    x = torch.randn(1, 3, 2, 2)
    per_channel = torch.stack([header.squeeze(x[0, c].flatten()).squeeze() for c in range(3)])
    torch.testing.assert_close(header.encode(x)[0], per_channel)


@pytest.mark.parametrize("dims", [2, 3])
def test_bottleneck_paths_of_monai_unets(dims):
    basic = BasicUNet(dims, 1, 2, features=(4, 4, 8, 8, 16, 4))
    assert bottleneck_path(basic) == "down_4"
    assert bottleneck_size(basic, "down_4", [1, 1, *(32,) * dims]) == (16, (2,) * dims)
    unet = _unet(dims, [4, 8, 16, 32])
    path = bottleneck_path(unet)
    assert path == "model.1.submodule.1.submodule.1.submodule"
    assert bottleneck_size(unet, path, [1, 1, *(32,) * dims]) == (32, (4,) * dims)
    with pytest.raises(ConfigKeyError, match="gkd_student_bottleneck"):
        bottleneck_path(torch.nn.Conv2d(1, 1, 1))


def test_bottleneck_swap_replaces_only_inside_the_block():
    net = _unet(2, [4, 8, 16]).eval()
    x = torch.rand(1, 1, 32, 32)
    path = bottleneck_path(net)
    plain = net(x)
    with bottleneck_swap(net, path, torch.zeros_like):
        swapped = net(x)
    assert not torch.allclose(plain, swapped)
    torch.testing.assert_close(net(x), plain)  # the hook is gone


@pytest.mark.parametrize("dims", [2, 3])
def test_label_autoencoder_reconstructs_label_shaped_logits(dims):
    psae = LabelSemanticAutoEncoder(dims, 2, PATCH[dims], semantic_dim=7, channels=(4, 8))
    onehot = torch.nn.functional.one_hot(torch.randint(0, 2, (2, *PATCH[dims])), 2).movedim(-1, 1).float()
    assert psae(onehot).shape == onehot.shape
    assert psae.encode(onehot).shape == (2, 7)
    with pytest.raises(ConfigKeyError, match="divide"):
        LabelSemanticAutoEncoder(dims, 2, (30,) * dims, 7, channels=(4, 8, 8))


# ---------------------------------------------------------------------------------------------------- DCGD


def test_contrastive_graph_loss_matches_a_hand_computed_case():
    # two images, one view each, D = 2. Student edges: (-1, 1)/sqrt2 and (1, -1)/sqrt2; teacher edges:
    # (-1, 1)/sqrt2 and (-1, -1)/sqrt2. Cosines [[1, 0], [-1, 0]] / tau = 0.5 -> logits [[2, 0], [-2, 0]]:
    # both rows give -log softmax = log(1 + e^-2).
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]])
    loss = contrastive_graph_loss(student, teacher, "intra", temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_inter_graph_is_every_pair_of_nodes_against_a_naive_loop():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 3, 4), torch.randn(3, 3, 4)  # 3 images, anchor + 2 views
    edges = graph_edges(student, "inter")
    assert edges.shape == (9 * 8 // 2, 4)
    nodes_s = torch.nn.functional.normalize(student.reshape(9, 4), dim=1)
    nodes_t = torch.nn.functional.normalize(teacher.reshape(9, 4), dim=1)
    pairs = [(i, j) for i in range(9) for j in range(i + 1, 9)]
    es = [torch.nn.functional.normalize(nodes_s[i] - nodes_s[j], dim=0) for i, j in pairs]
    et = [torch.nn.functional.normalize(nodes_t[i] - nodes_t[j], dim=0) for i, j in pairs]
    naive = 0.0
    for a in range(len(pairs)):
        logits = torch.stack([es[a] @ et[b] / 0.1 for b in range(len(pairs))])
        naive += -torch.log_softmax(logits, 0)[a]
    expected = naive / len(pairs)
    torch.testing.assert_close(contrastive_graph_loss(student, teacher, "inter", 0.1), expected)
    # the intra star has one edge per view: anchor -> view
    assert graph_edges(student, "intra").shape == (6, 4)


def test_identical_graphs_score_lower_than_shuffled_ones():
    torch.manual_seed(0)
    nodes = torch.randn(4, 3, 8)
    same = contrastive_graph_loss(nodes, nodes, "inter")
    other = contrastive_graph_loss(nodes, nodes[torch.randperm(4)], "inter")
    assert same < other


# ------------------------------------------------------------------------------- terms: shapes and gradients


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("term", ["intra", "inter", "cross", "align"])
def test_gradients_reach_only_the_student_and_its_san(dims, term):
    semantics, student, teacher = _semantics(dims)
    inputs = _inputs(semantics, dims)
    loss = {
        "intra": lambda: DualContrastiveGraphDistillation(semantics, "intra"),
        "inter": lambda: DualContrastiveGraphDistillation(semantics, "inter"),
        "cross": lambda: DomainInvariantCrossDistillation(semantics),
        "align": lambda: SemanticAlignment(semantics),
    }[term]()
    value = loss(inputs)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(student))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(semantics.student_header))
    assert all(g is None for g in _grads(teacher))
    assert all(g is None for g in _grads(semantics.teacher_header))
    assert all(g is None for g in _grads(semantics.label_autoencoder))
    # the distiller trains the SAN with the student, never the networks or the frozen TAN and P-SAE
    trainable = {id(p) for p in loss.trainable_parameters()}
    assert trainable == {id(p) for p in semantics.student_header.parameters()}


@pytest.mark.parametrize("dims", [2, 3])
def test_header_exchange_decodes_each_vector_into_the_other_models_decoder(dims):
    semantics, student, teacher = _semantics(dims)
    inputs = _inputs(semantics, dims)
    vectors = semantics.compute(inputs)
    assert vectors.student.shape == vectors.teacher.shape == (2, 16)
    assert vectors.student_views.shape == vectors.teacher_views.shape == (2, 2, 16)
    # the teacher's vector through the SAN and the student's decoder, and the other way round
    student_cross = semantics.decode("student", inputs.image, vectors.teacher)
    teacher_cross = semantics.decode("teacher", inputs.image, vectors.student)
    assert student_cross.shape == teacher_cross.shape == inputs.student_pred.shape
    assert not torch.allclose(student_cross, inputs.student_pred)
    # computed once per step: every term of the iteration reads the same vectors
    assert semantics.compute(inputs) is vectors
    # kept in the step's inputs only (inputs.shared), so they and the student's graph go with the step
    assert inputs.shared[semantics] is vectors
    student_vector = weakref.ref(vectors.student)
    del inputs, vectors, student_cross, teacher_cross
    gc.collect()
    assert student_vector() is None


def test_views_change_intensities_and_are_reproducible():
    semantics, _, _ = _semantics(2)
    image = torch.rand(2, 1, 32, 32)
    semantics.seed_views(5)
    first = semantics.augment(image)
    semantics.seed_views(5)
    again = semantics.augment(image)
    assert first.shape == (4, 1, 32, 32)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first[:2], image)


def test_bad_gkd_settings_are_one_line_errors():
    semantics, student, teacher = _semantics(2)
    with pytest.raises(ConfigKeyError, match="semantic_dim differ"):
        GKDSemantics(
            student,
            teacher,
            SemanticHeader(2, 16, (8, 8), 16),
            SemanticHeader(2, 48, (4, 4), 8),
            {"bottleneck": "x"},
            {"bottleneck": "y"},
        )
    with pytest.raises(ConfigKeyError, match="teacher_taps 'bottleneck'"):
        GKDSemantics(
            student, teacher, semantics.student_header, semantics.teacher_header, {"bottleneck": "x"}, {"enc1": "y"}
        )
    with pytest.raises(ValueError, match="DCGD graph"):
        DualContrastiveGraphDistillation(semantics, "ring")


# --------------------------------------------------------------------------------- Fréchet Semantic Distance


def test_frechet_distance_against_the_closed_form():
    # unbiased sample covariances are diagonal: var 2/3 and 8/3 (student), 6 and 2/3 (teacher); they commute, so
    # d^2 = |mu_s - mu_t|^2 + sum_i (sigma_s,i - sigma_t,i)^2 with sigma the standard deviations
    student = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]) + torch.tensor([1.0, 2.0])
    teacher = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + torch.tensor([-1.0, 0.5])
    expected = (2.0**2 + 1.5**2) + (math.sqrt(2 / 3) - math.sqrt(6)) ** 2 + (math.sqrt(8 / 3) - math.sqrt(2 / 3)) ** 2
    assert frechet_distance(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(student, student).item() == pytest.approx(0.0, abs=1e-5)
    metric = FrechetSemanticDistance()
    metric(student[:2], teacher[:3])
    metric(student[2:], teacher[3:])
    assert metric.aggregate().item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(student[:1], teacher)


def test_semantic_distance_handler_reports_the_distance_of_the_validation_images():
    semantics, _, _ = _semantics(2)
    images = [torch.rand(1, 30, 30) for _ in range(4)]  # not a multiple of the U-Net's 4: padded
    engine = Engine(lambda e, batch: [{"image": image} for image in batch])
    SemanticDistanceHandler(semantics).attach(engine, "val_semantic_distance")
    engine.run([images[:2], images[2:]], max_epochs=1)
    padded = torch.nn.functional.pad(torch.stack(images), [1, 1, 1, 1])
    with torch.no_grad():
        expected = frechet_distance(semantics.encode("student", padded), semantics.encode("teacher", padded))
    assert engine.state.metrics["val_semantic_distance"] == pytest.approx(expected.item(), rel=1e-5)
    engine.run([images[:1]], max_epochs=1)  # one validation image: no covariance, NaN, and training goes on
    assert math.isnan(engine.state.metrics["val_semantic_distance"])


# ------------------------------------------------------------------------------------------------ ACT stage


def _stage(semantics, tmp_path, checkpoint, **kwargs):
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        image = torch.rand(2, 1, 32, 32, generator=gen)
        batches.append({"image": image, "label": (image > 0.6).long()})
    settings = {"psae_iterations": 3, "act_iterations": 4, **kwargs}
    return AlignmentConsistencyStage(semantics, batches, str(tmp_path / "cache"), str(checkpoint), **settings)


def test_act_stage_reuses_a_matching_cache_and_retrains_a_mismatching_one(tmp_path):
    semantics, _, teacher = _semantics(2)
    checkpoint = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), checkpoint)
    before = {k: v.clone() for k, v in semantics.teacher_header.state_dict().items()}
    stage = _stage(semantics, tmp_path, checkpoint)
    path = stage.ensure()
    key = stage.fingerprint()
    assert stage.trained and path.endswith(f"act_{key}.pt")
    trained = {k: v.clone() for k, v in semantics.teacher_header.state_dict().items()}
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the TAN learned
    assert not any(p.requires_grad for p in semantics.teacher_header.parameters())  # and is frozen

    fresh, _, _ = _semantics(2)  # another process: same settings, untrained headers
    again = _stage(fresh, tmp_path, checkpoint)
    assert again.ensure() == path and not again.trained
    for k, v in fresh.teacher_header.state_dict().items():
        torch.testing.assert_close(v, trained[k])

    other = _stage(_semantics(2)[0], tmp_path, checkpoint, act_iterations=5)
    assert other.fingerprint() != key
    other.ensure()
    assert other.trained
    teacher.model[0].conv.unit0.conv.weight.data.add_(1.0)  # another teacher checkpoint: retrained
    torch.save(teacher.state_dict(), checkpoint)
    assert _stage(_semantics(2)[0], tmp_path, checkpoint).fingerprint() != key
