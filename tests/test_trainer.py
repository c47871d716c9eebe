import copy
import os

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss

from lightvessel_monai.engines import DistillationTrainer
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.handlers import AdversarialUpdateHandler, ResumeCheckpoint
from lightvessel_monai.losses import (
    AdversarialSimilarityDistillation,
    DistillationInputs,
    DistillationMethod,
    FeatureSimilarityDistillation,
    parse_terms,
)
from lightvessel_monai.networks import SimilarityDiscriminator
from lightvessel_monai.taps import FeatureTaps

from conftest import tiny_unet

TAPS = {"enc1": "conv_0", "dec1": "upcat_1", "enc2": "down_1", "dec2": "upcat_2"}


def batches(spatial_dims: int, n: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        image = torch.rand((2, 1) + (size,) * spatial_dims, generator=g)
        out.append({"image": image, "label": (image > 0.7).float()})
    return out


def make_trainer(
    spatial_dims,
    max_epochs=1,
    handlers=(),
    critic=False,
    student_taps=TAPS,
    seed=0,
    term_grad_interval=0,
    device="cpu",
    amp=False,
):
    """A LightVessel trainer on tiny networks; ``critic`` puts ASD's critic update in the asd term's handlers."""
    torch.manual_seed(0)  # the teacher is the same in every call, as if loaded from its checkpoint
    teacher = tiny_unet(spatial_dims, features=(8, 8, 16, 16, 32, 8))
    torch.manual_seed(seed)
    student = tiny_unet(spatial_dims).to(device)
    disc = SimilarityDiscriminator(spatial_dims, in_channels=2, channels=(4, 8))
    asd = AdversarialSimilarityDistillation(disc)
    fsd = FeatureSimilarityDistillation([["enc1", "dec1"], ["enc2", "dec2"]])
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    handler_objs = [h(asd, d_opt, student, opt) for h in handlers]
    asd_term = {"loss": asd, "weight": 0.5}
    if critic:
        asd_term["handlers"] = [AdversarialUpdateHandler(asd, d_opt, amp=amp)]
    trainer = DistillationTrainer(
        device=device,
        amp=amp,
        max_epochs=max_epochs,
        train_data_loader=batches(spatial_dims),
        network=student,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        teacher=teacher,
        teacher_taps=TAPS,
        student_taps=student_taps,
        distillation={"fsd": {"loss": fsd, "weight": 2.0}, "asd": asd_term},
        train_handlers=handler_objs,
        term_grad_interval=term_grad_interval,
    )
    return trainer, teacher, student, disc


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_distillation_step(spatial_dims):
    trainer, teacher, student, disc = make_trainer(spatial_dims, critic=True)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    d_before = {k: v.clone() for k, v in disc.state_dict().items()}
    trainer.run()
    out = trainer.state.output
    for key in ("loss", "loss_seg", "loss_fsd", "loss_asd", "loss_disc"):
        assert key in out, key
    total = out["loss_seg"] + 2.0 * out["loss_fsd"] + 0.5 * out["loss_asd"]
    torch.testing.assert_close(out["loss"].detach(), total)
    assert out["loss_fsd"] > 0
    # the teacher is frozen: eval mode, no grad, unchanged
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    assert any(not torch.equal(d_before[k], v) for k, v in disc.state_dict().items())
    assert trainer.terms["asd"].handlers[0].last_loss == out["loss_disc"]


def test_gradients_reach_only_the_student():
    trainer, teacher, student, disc = make_trainer(2)
    batch = batches(2)[0]
    trainer.state.iteration, trainer.state.output = 1, {}
    loss = trainer._distillation_loss(student(batch["image"]), batch["label"])
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_the_teacher_sees_exactly_the_student_input():
    trainer, teacher, student, _ = make_trainer(2)
    seen = []
    teacher.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    batch = batches(2)[0]
    image = batch["image"] * 0.5
    trainer.state.iteration, trainer.state.output = 1, {}
    trainer._distillation_loss(student(image), batch["label"])
    assert len(seen) == 1 and seen[0] is image
    with pytest.raises(RuntimeError, match="without a student forward"):  # the input is used once, then dropped
        trainer._distillation_loss(torch.zeros(2, 2, 32, 32), batch["label"])


def test_a_copy_of_the_student_does_not_feed_the_trainer():
    """Deep copies (the self-teacher, the report's copy) carry inert copies of the trainer's hooks."""
    trainer, _, student, _ = make_trainer(2)
    clone = copy.deepcopy(student)
    clone(torch.rand(1, 1, 32, 32))
    assert trainer.student_input.value is None and trainer.student_taps.features == {}
    student(torch.rand(1, 1, 32, 32))
    assert trainer.student_input.value is not None and set(trainer.student_taps.features) == set(TAPS)


def test_the_critic_handler_is_attached_once_and_steps_once_per_iteration():
    trainer, _, _, _ = make_trainer(2, max_epochs=2, critic=True)
    handler = trainer.terms["asd"].handlers[0]
    steps = []
    original = handler.step
    handler.step = lambda real, fake: steps.append(trainer.state.iteration) or original(real, fake)
    trainer.run()
    assert steps == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigKeyError, match="attached twice"):
        handler.attach(trainer)


def test_the_critic_handler_refuses_to_be_attached_outside_its_term():
    trainer, _, _, disc = make_trainer(2)
    asd = trainer.terms["asd"].loss
    stray = AdversarialUpdateHandler(asd, torch.optim.Adam(disc.parameters()))
    with pytest.raises(ConfigKeyError, match="belongs in its term's 'handlers'"):
        stray.attach(trainer)


@pytest.mark.parametrize(
    "distillation,match",
    [
        ({"fsd": {"loss": "FSD", "weight": 1.0}}, "'distillation#fsd#loss' must be a distillation loss"),
        ({"fsd": {"weight": 1.0}}, "'distillation#fsd' has no 'loss'"),
        ({"fsd": {"loss": None, "wieght": 1.0}}, "'distillation#fsd' has unknown key"),
        ({"fsd": {"loss": torch.nn.Identity(), "weight": float("nan")}}, "'distillation#fsd#weight' must be a finite"),
        ({"fsd": [1]}, "'distillation#fsd' must be a mapping"),
        ({"fsd": {"loss": torch.nn.Identity(), "handlers": [object()]}}, "has no attach"),
    ],
)
def test_a_malformed_term_is_a_one_line_error(distillation, match):
    with pytest.raises(ConfigKeyError, match=match) as err:
        parse_terms(distillation)
    assert "\n" not in str(err.value)


def test_one_handler_in_two_terms_is_refused():
    handler = AdversarialUpdateHandler(AdversarialSimilarityDistillation(SimilarityDiscriminator(2, 2, (4,))), None)
    terms = {
        "a": {"loss": torch.nn.Identity(), "handlers": [handler]},
        "b": {"loss": torch.nn.Identity(), "handlers": [handler]},
    }
    with pytest.raises(ConfigKeyError, match="'distillation#b#handlers#0' is the handler already listed by"):
        parse_terms(terms)


def test_taps_are_checked_against_each_term():
    _, teacher, student, _ = make_trainer(2)
    fsd = FeatureSimilarityDistillation([["enc1", "dec1"], ["enc2", "dec2"]])
    terms = {"fsd": {"loss": fsd}}
    with pytest.raises(ConfigKeyError, match="'down_9' does not exist"):
        DistillationMethod(terms).check_taps(student, {**TAPS, "enc2": "down_9"}, side="student")
    with pytest.raises(ConfigKeyError, match="term 'fsd' needs student_taps 'enc2'"):
        DistillationMethod(terms).check_taps(
            student, {"enc1": "conv_0", "dec1": "upcat_1", "dec2": "upcat_2"}, side="student"
        )
    with pytest.raises(ConfigKeyError, match="term 'fsd' needs teacher_taps 'dec2'"):
        DistillationMethod(terms).check_taps(
            teacher, {"enc1": "conv_0", "dec1": "upcat_1", "enc2": "down_1"}, side="teacher"
        )
    DistillationMethod(terms).check_taps(teacher, TAPS, side="teacher")


class Killed(Exception):
    pass


def kill_at_epoch_2(trainer):
    """Make ``trainer`` raise :class:`Killed` at its first iteration of epoch 2, as a kill would stop it."""

    def kill(engine):
        if engine.state.epoch == 2:
            raise Killed()

    trainer.add_event_handler(Events.ITERATION_STARTED, kill)


def test_killed_run_resumes_where_it_stopped(tmp_path):
    def resume_handler(asd, d_opt, student, opt):
        save_dict = {"network": student, "optimizer": opt, "discriminator": asd.discriminator}
        return ResumeCheckpoint(str(tmp_path), save_dict)

    # uninterrupted reference run of 2 epochs (no critic updates, so it is deterministic)
    reference, _, ref_student, _ = make_trainer(2, max_epochs=2)
    reference.run()

    trainer, _, student, disc = make_trainer(2, max_epochs=2, handlers=[resume_handler])

    kill_at_epoch_2(trainer)
    with pytest.raises(Killed):
        trainer.run()
    path = tmp_path / "resume.pt"
    assert path.is_file()
    saved = torch.load(path, weights_only=True)
    assert saved["trainer"]["iteration"] == 3  # end of epoch 1 (3 iterations per epoch)

    # a fresh process: new objects, different initial weights, then resume
    resumed, _, student2, disc2 = make_trainer(2, max_epochs=2, handlers=[resume_handler], seed=123)
    resumed.run()
    assert resumed.state.epoch == 2 and resumed.state.iteration == 6
    for a, b in zip(ref_student.parameters(), student2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(disc.parameters(), disc2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not os.path.exists(path), "a completed run removes its resume file"


def test_resume_checkpoint_holds_the_grad_scaler(tmp_path):
    """With AMP the trainer's GradScaler is part of the resume state (a CPU scaler here; tests/test_cuda.py runs the
    real CUDA AMP path)."""
    trainer, _, student, _ = make_trainer(2, max_epochs=2)

    def cpu_scaler(engine):  # MONAI's Trainer.run creates the (CUDA) scaler at the start of the run; replace it
        engine.scaler = torch.amp.GradScaler("cpu", init_scale=512.0)

    trainer.add_event_handler(Events.STARTED, cpu_scaler)
    handler = ResumeCheckpoint(str(tmp_path), {"network": student})
    handler.attach(trainer)

    kill_at_epoch_2(trainer)
    with pytest.raises(Killed):
        trainer.run()
    saved = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert saved["scaler"]["scale"] == 512.0

    fresh, _, student2, _ = make_trainer(2, max_epochs=2)
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    ResumeCheckpoint(str(tmp_path), {"network": student2}).load(fresh)
    assert fresh.scaler.get_scale() == 512.0
    # without AMP there is no scaler state to save
    plain, _, student3, _ = make_trainer(2)
    plain_handler = ResumeCheckpoint(str(tmp_path / "plain"), {"network": student3})
    plain_handler.attach(plain)
    plain_handler.save(plain)
    assert "scaler" not in torch.load(tmp_path / "plain" / "resume.pt", weights_only=True)


def _separate_backward_norms(trainer, teacher, student, batch):
    """Reference: each weighted term of the first iteration backpropagated alone into ``.grad`` of a student copy."""
    student = copy.deepcopy(student)
    s_taps, t_taps = FeatureTaps(student, TAPS), FeatureTaps(teacher, TAPS)
    pred = student(batch["image"])
    with torch.no_grad():
        teacher_pred = teacher(batch["image"])
    inputs = DistillationInputs(
        batch["image"], batch["label"], pred, teacher_pred, s_taps.features, t_taps.features, iteration=1
    )
    terms = {"seg": trainer.seg_loss(pred, batch["label"])}
    terms |= {name: term.weight * term.loss(inputs) for name, term in trainer.terms.items()}
    norms = {}
    for name, value in terms.items():
        student.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        norms[name] = float(sum(p.grad.pow(2).sum() for p in student.parameters() if p.grad is not None).sqrt())
    return norms


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_term_gradient_norms_match_one_backward_per_term(spatial_dims):
    trainer, teacher, student, _ = make_trainer(spatial_dims, critic=True, term_grad_interval=1)
    teacher.eval()
    expected = _separate_backward_norms(trainer, teacher, student, trainer.data_loader[0])
    trainer.run()
    first = trainer.term_grad_norms[0]
    assert first["iteration"] == 1 and set(first) == {"iteration", "seg", "fsd", "asd"}
    for name, value in expected.items():
        assert value > 0, name
        assert first[name] == pytest.approx(value, rel=1e-4), name
    # every iteration was measured (interval 1) and the last one is also in the engine output
    assert [h["iteration"] for h in trainer.term_grad_norms] == [1, 2, 3]
    assert trainer.state.output["grad_fsd"] == trainer.term_grad_norms[-1]["fsd"]


def test_measuring_term_gradients_leaves_training_unchanged():
    runs = []
    for interval in (0, 1):
        trainer, _, student, disc = make_trainer(2, max_epochs=2, critic=True, term_grad_interval=interval)
        trainer.run()
        runs.append((student.state_dict(), disc.state_dict(), len(trainer.term_grad_norms)))
    assert runs[0][2] == 0 and runs[1][2] == 6  # 2 epochs x 3 iterations measured only when asked
    for before, after in zip(runs[0][:2], runs[1][:2], strict=True):
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_term_gradients_are_zero_in_the_adversarial_warm_up():
    trainer, *_ = make_trainer(2, term_grad_interval=1)
    trainer.distillers["asd"].warmup_iterations = 2
    trainer.run()
    assert [h["asd"] for h in trainer.term_grad_norms[:2]] == [0.0, 0.0]
    assert trainer.term_grad_norms[2]["asd"] > 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_term_grad_interval_must_be_a_whole_number(bad):
    with pytest.raises(ConfigKeyError, match="term_grad_interval"):
        make_trainer(2, term_grad_interval=bad)
