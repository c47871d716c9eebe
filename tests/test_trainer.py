import copy
import os

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss

from lightvessel_monai.engines import DistillationTrainer
from lightvessel_monai.errors import CheckpointMismatchError, ConfigKeyError
from lightvessel_monai.features import FeatureTaps
from lightvessel_monai.handlers import AdversarialUpdateHandler, ResumeCheckpoint
from lightvessel_monai.losses import (
    AdversarialSimilarityDistillation,
    DistillationInputs,
    FeatureSimilarityDistillation,
)
from lightvessel_monai.networks import SimilarityDiscriminator

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
    spatial_dims, max_epochs=1, handlers=(), teacher_checkpoint=None, student_taps=TAPS, seed=0, term_grad_interval=0
):
    torch.manual_seed(0)  # the teacher is the same in every call, as if loaded from its checkpoint
    teacher = tiny_unet(spatial_dims, features=(8, 8, 16, 16, 32, 8))
    torch.manual_seed(seed)
    student = tiny_unet(spatial_dims)
    disc = SimilarityDiscriminator(spatial_dims, in_channels=2, channels=(4, 8))
    asd = AdversarialSimilarityDistillation(disc)
    fsd = FeatureSimilarityDistillation([["enc1", "dec1"], ["enc2", "dec2"]])
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    handler_objs = [h(asd, d_opt, student, opt) for h in handlers]
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=batches(spatial_dims),
        network=student,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        teacher=teacher,
        teacher_checkpoint=teacher_checkpoint,
        teacher_taps=TAPS,
        student_taps=student_taps,
        distillers={"fsd": fsd, "asd": asd},
        distiller_weights={"fsd": 2.0, "asd": 0.5},
        train_handlers=handler_objs,
        term_grad_interval=term_grad_interval,
    )
    return trainer, teacher, student, disc


def adversarial_handler(asd, d_opt, student, opt):
    return AdversarialUpdateHandler(asd, d_opt)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_distillation_step(spatial_dims):
    trainer, teacher, student, disc = make_trainer(spatial_dims, handlers=[adversarial_handler])
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
    assert trainer.state.distill["teacher_pred"].shape == out["pred"].shape


def test_gradients_reach_only_the_student():
    trainer, teacher, student, disc = make_trainer(2)
    batch = batches(2)[0]
    trainer.state.output = {"image": batch["image"]}
    trainer.state.iteration = 1
    loss = trainer._distillation_loss(student(batch["image"]), batch["label"])
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    wrong = tiny_unet(2, features=(4, 4, 4, 4, 4, 4))
    path = tmp_path / "teacher.pt"
    torch.save(wrong.state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as err:
        make_trainer(2, teacher_checkpoint=str(path))
    assert str(path) in str(err.value) and "shape mismatches" in str(err.value)
    assert "\n" not in str(err.value)


def test_teacher_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(5)
    source = tiny_unet(2, features=(8, 8, 16, 16, 32, 8))
    path = tmp_path / "teacher.pt"
    torch.save(source.state_dict(), path)
    _, teacher, _, _ = make_trainer(2, teacher_checkpoint=str(path))
    for a, b in zip(source.parameters(), teacher.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_bad_tap_path_and_missing_tap():
    with pytest.raises(ConfigKeyError, match="'down_9' does not exist"):
        make_trainer(2, student_taps={**TAPS, "enc2": "down_9"})
    with pytest.raises(ConfigKeyError, match="needs student_taps 'enc2'"):
        make_trainer(2, student_taps={"enc1": "conv_0", "dec1": "upcat_1", "dec2": "upcat_2"})


class Killed(Exception):
    pass


def test_killed_run_resumes_where_it_stopped(tmp_path):
    def resume_handler(asd, d_opt, student, opt):
        save_dict = {"network": student, "optimizer": opt, "discriminator": asd.discriminator}
        return ResumeCheckpoint(str(tmp_path), save_dict)

    # uninterrupted reference run of 2 epochs (no critic updates, so it is deterministic)
    reference, _, ref_student, _ = make_trainer(2, max_epochs=2)
    reference.run()

    trainer, _, student, disc = make_trainer(2, max_epochs=2, handlers=[resume_handler])

    def kill(engine):
        if engine.state.epoch == 2:
            raise Killed()

    trainer.add_event_handler(Events.ITERATION_STARTED, kill)
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
    terms |= {name: trainer.distiller_weights[name] * d(inputs) for name, d in trainer.distillers.items()}
    norms = {}
    for name, value in terms.items():
        student.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        norms[name] = float(sum(p.grad.pow(2).sum() for p in student.parameters() if p.grad is not None).sqrt())
    return norms


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_term_gradient_norms_match_one_backward_per_term(spatial_dims):
    trainer, teacher, student, _ = make_trainer(spatial_dims, handlers=[adversarial_handler], term_grad_interval=1)
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
        trainer, _, student, disc = make_trainer(
            2, max_epochs=2, handlers=[adversarial_handler], term_grad_interval=interval
        )
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
