"""DSKD (Lin, arXiv 2509.03173): deep distribution loss, pixel-wise self-distillation and the self-teacher handler."""

import io
import math

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from torch import nn

from lightvessel_monai.engines import DistillationTrainer
from lightvessel_monai.handlers import SelfTeacherHandler, make_self_teacher
from lightvessel_monai.losses import (
    DeepDistributionLoss,
    DistillationInputs,
    DistillationMethod,
    PixelwiseSelfDistillation,
    parse_terms,
    patch_distribution,
    patch_distribution_kl,
    student_parameters,
)
from lightvessel_monai.taps import FeatureTaps, tap_channels

from conftest import REPO, tiny_unet

TAPS = {"enc1": "conv_0", "dec1": "upcat_1", "enc2": "down_1", "dec2": "upcat_2"}


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# 4x4 label, 2x2 patches with foreground shares TL 1/4, TR 0, BL 1, BR 1/4
LABEL_4x4 = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1]]).view(1, 1, 4, 4)
# constant foreground probability per patch: TL 0.5, TR 0.1, BL 0.8, BR 0.25
PROB_4x4 = torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.8, 0.8, 0.25, 0.25], [0.8, 0.8, 0.25, 0.25]])
# KL(target || prediction) per patch, summed over [bg, fg]; BR matches exactly
DDL_4x4 = (
    (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))  # TL
    + math.log(1 / 0.9)  # TR: target [1, 0]
    + math.log(1 / 0.8)  # BL: target [0, 1]
    + 0.0  # BR: [0.75, 0.25] both
) / 4


def test_ddl_hand_computed_softmax_and_sigmoid():
    fg = torch.log(PROB_4x4 / (1 - PROB_4x4))
    softmax_logits = torch.stack([torch.zeros(4, 4), fg]).unsqueeze(0)  # softmax([0, l]) = [1 - p, p]
    onehot = torch.cat([1 - LABEL_4x4, LABEL_4x4], dim=1).float()
    loss = patch_distribution_kl(softmax_logits, onehot, patch_size=2, activation="softmax")
    torch.testing.assert_close(loss, torch.tensor(DDL_4x4))
    # the paper's binary side output: one sigmoid channel, distribution [fg, bg] per patch
    loss = patch_distribution_kl(fg.view(1, 1, 4, 4), LABEL_4x4.float(), patch_size=2, activation="sigmoid")
    torch.testing.assert_close(loss, torch.tensor(DDL_4x4))


def test_ddl_is_zero_when_patch_shares_match_but_pixels_do_not():
    # one vessel pixel per patch; the prediction spreads it evenly: wrong pixel-wise, right per patch
    label = torch.zeros(1, 1, 4, 4)
    label[0, 0, ::2, ::2] = 1
    logits = torch.full((1, 1, 4, 4), logit(0.25))
    assert patch_distribution_kl(logits, label, 2, "sigmoid").abs() < 1e-6
    # with 4x4 patches the shares (1/4) still match; with 1x1 patches they do not
    assert patch_distribution_kl(logits, label, 4, "sigmoid").abs() < 1e-6
    assert patch_distribution_kl(logits, label, 1, "sigmoid") > 0.5


@pytest.mark.parametrize("shape", [(5, 5), (3, 5, 4)])
def test_patch_distribution_against_naive_loops(shape):
    prob = torch.softmax(torch.randn(2, 3, *shape), dim=1)
    target = torch.nn.functional.one_hot(torch.randint(0, 3, (2, *shape)), 3).movedim(-1, 1).float()
    s = 2
    z = patch_distribution(prob, s)
    assert z.shape == (2, 3) + tuple(math.ceil(n / s) for n in shape)
    kls = []
    for b in range(2):
        for idx in torch.cartesian_prod(*[torch.arange(math.ceil(n / s)) for n in shape]).view(-1, len(shape)):
            region = tuple(slice(int(i) * s, int(i) * s + s) for i in idx)  # border patches are partial
            q = prob[(b, slice(None)) + region].flatten(1).mean(1)
            t = target[(b, slice(None)) + region].flatten(1).mean(1)
            torch.testing.assert_close(z[(b, slice(None)) + tuple(int(i) for i in idx)], q)
            kls.append(sum(float(tc * math.log(tc / qc)) for tc, qc in zip(t, q, strict=True) if tc > 0))
    loss = patch_distribution_kl(prob.log(), target, s, "softmax")  # log-probabilities are valid logits
    torch.testing.assert_close(loss, torch.tensor(sum(kls) / len(kls)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_distribution_loss_shapes_and_gradients(spatial_dims):
    size = 16 if spatial_dims == 2 else 8
    features = {
        "dec1": torch.randn(2, 4, *([size] * spatial_dims), requires_grad=True),
        "dec2": torch.randn(2, 8, *([size // 2] * spatial_dims), requires_grad=True),  # coarser level
    }
    label = torch.randint(0, 2, (2, 1) + (size,) * spatial_dims)
    ddl = DeepDistributionLoss(["dec1", "dec2"], {"dec1": 4, "dec2": 8, "enc1": 3}, 2, spatial_dims, patch_size=4)
    assert ddl.required_student_taps == ("dec1", "dec2") and ddl.required_teacher_taps == ()
    outputs = ddl.side_outputs(features, label.shape[2:])
    assert all(o.shape == (2, 2) + (size,) * spatial_dims for o in outputs.values())
    inputs = DistillationInputs(
        image=label.float(), label=label, student_pred=torch.zeros(1), student_features=features
    )
    loss = ddl(inputs)
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features.values())
    assert all(p.grad is not None for p in ddl.trainable_parameters())
    assert len(ddl.trainable_parameters()) == 4  # two 3x3 heads: weight + bias each
    with pytest.raises(KeyError, match="dec2"):
        ddl(DistillationInputs(image=label.float(), label=label, student_pred=torch.zeros(1), student_features={}))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="DSKD DDL: set exactly one"):
        DeepDistributionLoss(["dec1"], {"dec1": 4}, 2, 2, softmax=True, sigmoid=True)
    with pytest.raises(ValueError, match="patch_size"):
        DeepDistributionLoss(["dec1"], {"dec1": 4}, 2, 2, patch_size=0)
    with pytest.raises(Exception, match="dec9"):
        DeepDistributionLoss(["dec9"], {"dec1": 4}, 2, 2)
    with pytest.raises(ValueError, match="temperature"):
        PixelwiseSelfDistillation(tiny_unet(2), temperature=0)
    net = tiny_unet(2)
    with pytest.raises(ValueError, match="mode"):
        SelfTeacherHandler(net, make_self_teacher(net), mode="swa")
    with pytest.raises(ValueError, match="decay"):
        SelfTeacherHandler(net, make_self_teacher(net), decay=1.0)
    with pytest.raises(ValueError, match="not a copy"):
        SelfTeacherHandler(net, tiny_unet(2, features=(4, 4, 8, 8, 16, 8)))
    with pytest.raises(ValueError, match="not the network itself"):
        SelfTeacherHandler(net, net)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_psdl_zero_for_identical_self_teacher_and_gradients_reach_student_and_heads_only(spatial_dims):
    student = tiny_unet(spatial_dims)
    taps = FeatureTaps(student, TAPS)  # hooks first: the self-teacher copy must not inherit them
    self_teacher = make_self_teacher(student)
    shape = [1, 1, 32, 32] if spatial_dims == 2 else [1, 1, 32, 16, 16]  # bottleneck > 1 voxel for instance norm
    ddl = DeepDistributionLoss(["dec1", "dec2"], tap_channels(student, TAPS, shape), 2, spatial_dims, patch_size=4)
    psdl = PixelwiseSelfDistillation(self_teacher, temperature=2.0)
    assert psdl.trainable_parameters() == []
    x = torch.rand(2, *shape[1:])
    pred = student(x)
    features = dict(taps.features)
    inputs = DistillationInputs(image=x, label=(x > 0.6).long(), student_pred=pred, student_features=taps.features)
    psdl_value = psdl(inputs)
    assert psdl_value.abs() < 1e-6, "PSDL must vanish when the self-teacher is the student"
    assert all(taps.features[k] is v for k, v in features.items()), "the self-teacher overwrote the student's taps"
    loss = ddl(inputs) + psdl_value
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ddl.side_heads.parameters())
    assert all(p.grad is None and not p.requires_grad for p in self_teacher.parameters())

    params = student_parameters(student, {"ddl": {"loss": ddl}, "psdl": {"loss": psdl}})
    ids = {id(p) for p in params}
    assert all(id(p) in ids for p in ddl.side_heads.parameters())
    assert not any(id(p) in ids for p in self_teacher.parameters())
    before = {k: v.clone() for k, v in self_teacher.state_dict().items()}
    torch.optim.SGD(params, lr=0.1).step()
    assert all(torch.equal(before[k], v) for k, v in self_teacher.state_dict().items())
    # a different self-teacher gives a positive term
    assert psdl(DistillationInputs(image=x, label=x, student_pred=student(x))) > 0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.register_buffer("stat", torch.zeros(1))


def set_weights(module: Tiny, w, b, stat=0.0):
    with torch.no_grad():
        module.linear.weight.copy_(torch.tensor([w]))
        module.linear.bias.fill_(b)
        module.stat.fill_(stat)


def test_ema_handler_two_steps_hand_computed():
    student, teacher = Tiny(), Tiny()
    set_weights(student, [1.0, 2.0], 0.0)
    set_weights(teacher, [9.0, 9.0], 9.0, 9.0)  # overwritten at STARTED
    handler = SelfTeacherHandler(student, teacher, mode="ema", decay=0.75)
    steps = [([3.0, -2.0], 4.0, 1.0), ([-1.0, 6.0], 0.0, 2.0)]

    engine = Engine(lambda e, batch: set_weights(student, *batch))
    handler.attach(engine)
    engine.run(steps, max_epochs=1)
    # t1 = 0.75 * [1, 2, 0] + 0.25 * [3, -2, 4] = [1.5, 1.0, 1.0]; t2 = 0.75 * t1 + 0.25 * [-1, 6, 0]
    torch.testing.assert_close(teacher.linear.weight, torch.tensor([[0.875, 2.25]]))
    torch.testing.assert_close(teacher.linear.bias, torch.tensor([0.75]))
    torch.testing.assert_close(teacher.stat, torch.tensor([2.0]))  # buffers follow the student
    assert handler.num_updates == 2
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_snapshot_handler_holds_the_previous_epoch():
    student, teacher = Tiny(), Tiny()
    set_weights(student, [0.0, 0.0], 0.0)
    handler = SelfTeacherHandler(student, teacher, mode="snapshot", decay=0.5)
    seen = []

    def step(engine, batch):
        set_weights(student, [float(engine.state.epoch), batch], 0.0)
        seen.append(teacher.linear.weight.detach().clone().view(-1).tolist())

    engine = Engine(step)
    handler.attach(engine)
    engine.run([1.0, 2.0], max_epochs=2)
    # epoch 1 sees the initial student; epoch 2 the student at the end of epoch 1
    assert seen == [[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [1.0, 2.0]]
    assert teacher.linear.weight.view(-1).tolist() == [2.0, 2.0]
    assert handler.num_updates == 2


def test_state_dict_round_trip_resumes_the_same_self_teacher():
    student, teacher = Tiny(), Tiny()
    set_weights(student, [1.0, 2.0], 3.0)
    handler = SelfTeacherHandler(student, teacher, mode="ema", decay=0.5)
    engine = Engine(lambda e, batch: set_weights(student, [batch, batch], batch))
    handler.attach(engine)
    engine.run([5.0], max_epochs=1)
    buffer = io.BytesIO()
    torch.save(handler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    student2, teacher2 = Tiny(), Tiny()
    set_weights(student2, [-7.0, -7.0], -7.0)
    resumed = SelfTeacherHandler(student2, teacher2, mode="ema", decay=0.5)
    resumed.load_state_dict(state)
    assert resumed.num_updates == 1
    torch.testing.assert_close(teacher2.linear.weight, torch.tensor([[3.0, 3.5]]))  # 0.5 * [1, 2] + 0.5 * 5
    # starting the resumed run must not re-initialise the self-teacher from the (new) student
    first = []
    engine2 = Engine(lambda e, batch: first.append(teacher2.linear.weight.detach().clone()) if not first else None)
    resumed.attach(engine2)
    engine2.run([0.0], max_epochs=1)
    torch.testing.assert_close(first[0], torch.tensor([[3.0, 3.5]]))
    # ...and neither does an engine that is past iteration 0 (state restored before STARTED)
    late = SelfTeacherHandler(student2, teacher2, mode="snapshot")
    engine3 = Engine(lambda e, batch: None)
    late.attach(engine3)
    engine3.load_state_dict({"iteration": 1, "max_epochs": 2, "epoch_length": 1})
    before = teacher2.linear.weight.detach().clone()
    seen = []
    engine3.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(teacher2.linear.weight.detach().clone()))
    engine3.run([0.0], max_epochs=2)  # resumes at epoch 2
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], before)


OVERLAYS = [
    pytest.param([], "dskd", [32, 32], id="2d-dskd"),
    pytest.param([], "dskd_kd", [32, 32], id="2d-dskd_kd"),
    pytest.param(["configs/data/synthetic_3d.json"], "dskd", [32, 16, 16], id="3d-dskd"),
    pytest.param(["configs/data/synthetic_3d.json"], "dskd_kd", [32, 16, 16], id="3d-dskd_kd"),
]


@pytest.mark.parametrize("data, method, patch_size", OVERLAYS)
def test_overlays_parse_and_run_each_distiller_once(tmp_path, data, method, patch_size):
    files = [str(REPO / "bundle" / "configs" / "train.json")] + [str(REPO / d) for d in data]
    parser = ConfigParser()
    overlays = ["dskd", "dskd_kd"] if method == "dskd_kd" else [method]  # dskd_kd extends dskd: listed after it
    parser.read_config(files + [str(REPO / "configs" / "methods" / f"{m}.json") for m in overlays])
    parser["bundle_root"] = str(tmp_path)
    parser["patch_size"] = patch_size  # a tiny input
    distillation = parser.get_parsed_content("distillation")
    distillers = {name: term.loss for name, term in parse_terms(distillation).items()}
    network = parser.get_parsed_content("network")
    use_teacher = parser.get_parsed_content("use_teacher")
    expected = {"dskd_ddl", "dskd_psdl"} | ({"dskd_kd"} if method == "dskd_kd" else set())
    assert set(distillers) == expected and use_teacher == (method == "dskd_kd")
    levels = ("dec1", "dec2") if data else ("dec1", "dec2", "dec3", "dec4")
    assert distillers["dskd_ddl"].side_heads.taps == levels

    student_taps = parser.get_parsed_content("student_taps")
    DistillationMethod(distillation).check_taps(network, student_taps, side="student")
    if use_teacher:
        teacher, teacher_taps = parser.get_parsed_content("teacher"), parser.get_parsed_content("teacher_taps")
        DistillationMethod(distillation).check_taps(teacher, teacher_taps, side="teacher")
    handlers = [h for term in parse_terms(distillation).values() for h in term.handlers]
    assert len(handlers) == 1 and isinstance(handlers[0], SelfTeacherHandler)
    assert distillation["dskd_psdl"]["handlers"] == handlers
    self_teacher = distillers["dskd_psdl"].self_teacher
    assert handlers[0].self_teacher is self_teacher and handlers[0].network is network
    params = {id(p) for p in parser.get_parsed_content("optimizer").param_groups[0]["params"]}
    assert all(id(p) in params for p in distillers["dskd_ddl"].parameters())
    assert not any(id(p) in params for p in self_teacher.parameters())

    taps = FeatureTaps(network, student_taps)
    x = torch.rand([2, parser["in_channels"]] + patch_size)
    pred = network(x)
    teacher_pred = parser.get_parsed_content("teacher")(x).detach() if use_teacher else None
    inputs = DistillationInputs(
        image=x, label=(x > 0.5).long(), student_pred=pred, teacher_pred=teacher_pred, student_features=taps.features
    )
    values = {name: distiller(inputs) for name, distiller in distillers.items()}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in values.values())
    assert values["dskd_ddl"] > 0 and values["dskd_psdl"].abs() < 1e-5  # the self-teacher starts as the student
    if use_teacher:
        assert values["dskd_kd"] > 0


def test_trainer_run_updates_the_self_teacher_and_logs_each_term():
    torch.manual_seed(0)
    student = tiny_unet(2)
    self_teacher = make_self_teacher(student)
    with torch.no_grad():
        for p in self_teacher.parameters():
            p.add_(1.0)  # must be replaced by the student at STARTED
    ddl = DeepDistributionLoss(["dec1", "dec2"], tap_channels(student, TAPS, [1, 1, 32, 32]), 2, 2, patch_size=8)
    psdl = PixelwiseSelfDistillation(self_teacher)
    handler = SelfTeacherHandler(student, self_teacher, mode="ema", decay=0.5)
    distillation = {
        "dskd_ddl": {"loss": ddl, "weight": 0.5},
        "dskd_psdl": {"loss": psdl, "weight": 2.0, "handlers": [handler]},
    }
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, 1, 32, 32, generator=g) for _ in range(2)]
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": im, "label": (im > 0.7).float()} for im in images],
        network=student,
        optimizer=torch.optim.Adam(student_parameters(student, distillation), lr=1e-2),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        teacher=None,
        student_taps=TAPS,
        distillation=distillation,
    )
    states = [{k: v.clone() for k, v in student.state_dict().items()}]
    heads_before = [p.detach().clone() for p in ddl.parameters()]
    psdl_values = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        states.append({k: v.clone() for k, v in student.state_dict().items()})
        psdl_values.append(float(engine.state.output["loss_dskd_psdl"]))

    trainer.run()
    out = trainer.state.output
    assert trainer.state.iteration == 2
    for key in ("loss_seg", "loss_dskd_ddl", "loss_dskd_psdl"):
        assert key in out, key
    torch.testing.assert_close(
        out["loss"].detach(), out["loss_seg"] + 0.5 * out["loss_dskd_ddl"] + 2.0 * out["loss_dskd_psdl"]
    )
    assert psdl_values[0] < 1e-6 < psdl_values[1], "iteration 2 distils from a self-teacher that lags the student"
    s0, s1, s2 = states
    for name, t in self_teacher.state_dict().items():  # EMA of two steps from the initial student
        torch.testing.assert_close(t, 0.25 * s0[name] + 0.25 * s1[name] + 0.5 * s2[name])
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, ddl.parameters(), strict=True)), (
        "the side heads did not train"
    )
    assert not self_teacher.training and all(p.grad is None for p in self_teacher.parameters())


def test_bundle_resume_checkpoint_continues_the_same_self_teacher(tmp_path):
    from lightvessel_monai.handlers import ResumeCheckpoint

    def build():
        student = Tiny()
        self_teacher = make_self_teacher(student)
        handler = SelfTeacherHandler(student, self_teacher, mode="ema", decay=0.5)
        psdl = PixelwiseSelfDistillation(self_teacher)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        terms = {"dskd_psdl": {"loss": psdl, "handlers": [handler]}}
        resume = ResumeCheckpoint(str(tmp_path), DistillationMethod(terms).training_state(student, optimizer))
        return student, self_teacher, handler, resume

    student, self_teacher, handler, resume = build()

    def step(engine, batch):
        if engine.state.epoch == 2:
            raise KeyboardInterrupt  # killed during epoch 2, after epoch 1's checkpoint
        set_weights(student, [batch, batch], batch)

    engine = Engine(step)
    handler.attach(engine)  # method handlers come before ResumeCheckpoint, as in the bundle
    resume.attach(engine)
    with pytest.raises(KeyboardInterrupt):
        engine.run([1.0, 2.0], max_epochs=2)
    saved = {k: v.clone() for k, v in self_teacher.state_dict().items()}
    assert not torch.equal(saved["linear.weight"], student.linear.weight.detach())  # an EMA, not the student

    student2, self_teacher2, handler2, resume2 = build()  # a fresh process: new, different weights
    seen = []
    engine2 = Engine(lambda e, b: seen.append({k: v.clone() for k, v in self_teacher2.state_dict().items()}))
    handler2.attach(engine2)
    resume2.attach(engine2)
    engine2.run([1.0, 2.0], max_epochs=2)
    assert engine2.state.epoch == 2 and handler2.num_updates == 4
    for key, value in saved.items():
        torch.testing.assert_close(seen[0][key], value)
