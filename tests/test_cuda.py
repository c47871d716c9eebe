"""CUDA paths: AMP distillation steps, the GradScaler in the resume checkpoint, FSD under autocast.

Marked ``cuda`` and skipped without a GPU (run them with ``pytest -m cuda`` on a CUDA machine). The CPU side of
the same code is covered in test_trainer.py and test_fsd.py.
"""

import pytest
import torch
from test_trainer import Killed, kill_at_epoch_2, make_trainer

from lightvessel_monai.handlers import ResumeCheckpoint
from lightvessel_monai.losses import FeatureSimilarityDistillation
from lightvessel_monai.losses.base import DistillationInputs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_amp_steps_train_the_student_and_the_critic_on_the_gpu(spatial_dims):
    trainer, teacher, student, disc = make_trainer(spatial_dims, critic=True, device="cuda", amp=True)
    t0, s0 = _snapshot(teacher), _snapshot(student)
    trainer.run()
    out = trainer.state.output
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    handler = trainer.after_step_handlers[0]
    assert handler.scaler.is_enabled()
    assert next(disc.parameters()).device.type == "cuda" and next(student.parameters()).device.type == "cuda"
    for key in ("loss", "loss_seg", "loss_fsd", "loss_asd"):
        assert torch.isfinite(torch.as_tensor(out[key])).all(), key
    assert isinstance(out["loss_disc"], float) and out["loss_disc"] == out["loss_disc"]
    assert _changed(s0, student), "the student did not change"
    assert not _changed(t0, teacher), "the teacher changed"
    assert all(p.dtype == torch.float32 for p in student.parameters())  # AMP keeps float32 master weights
    # one more critic step changes the critic (its optimiser steps under its own GradScaler)
    d0 = _snapshot(disc)
    real = torch.rand(2, 2, *([16] * spatial_dims), device="cuda")
    fake = torch.rand(2, 2, *([16] * spatial_dims), device="cuda")
    handler.step(real, fake)
    assert _changed(d0, disc), "the critic did not change"


def test_amp_resume_checkpoint_holds_the_trainers_grad_scaler(tmp_path):
    def resume(asd, d_opt, student, opt):
        return ResumeCheckpoint(str(tmp_path), {"network": student, "optimizer": opt})

    trainer, _, _, _ = make_trainer(2, max_epochs=2, handlers=[resume], device="cuda", amp=True)

    kill_at_epoch_2(trainer)
    with pytest.raises(Killed):
        trainer.run()
    saved = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert set(saved["scaler"]) >= {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    assert saved["scaler"]["_growth_tracker"] == 3  # three finite fp16 steps in epoch 1

    fresh, _, student2, _ = make_trainer(2, max_epochs=2, device="cuda", amp=True)
    fresh.scaler = torch.amp.GradScaler("cuda", init_scale=8.0)
    ResumeCheckpoint(str(tmp_path), {"network": student2, "optimizer": fresh.optimizer}).load(fresh)
    assert fresh.scaler.get_scale() == saved["scaler"]["scale"] != 8.0
    assert fresh.scaler.state_dict()["_growth_tracker"] == 3


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fsd_implicit_form_under_autocast_matches_float32(spatial_dims):
    """FSD computes in float32 inside autocast: on the same (half-precision) features the two agree to 1e-5; against
    the unrounded float32 features, within the rounding of the inputs (2e-2 relative)."""
    torch.manual_seed(0)
    size = (64, 64) if spatial_dims == 2 else (16, 16, 16)
    feats = {
        side: {k: torch.randn(2, c, *size, device="cuda") for k in ("enc1", "dec1")}
        for side, c in (("teacher", 16), ("student", 8))
    }
    fsd = FeatureSimilarityDistillation([["enc1", "dec1"]])

    def loss(student, teacher):
        return fsd(DistillationInputs(None, None, None, None, student, teacher))

    exact = loss(feats["student"], feats["teacher"])
    half = {side: {k: v.half() for k, v in f.items()} for side, f in feats.items()}
    for f in half["student"].values():
        f.requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.float16):
        amp = loss(half["student"], half["teacher"])
    assert amp.dtype == torch.float32
    rounded = loss(
        {k: v.detach().float() for k, v in half["student"].items()},
        {k: v.float() for k, v in half["teacher"].items()},
    )
    torch.testing.assert_close(amp.detach(), rounded, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(amp.detach(), exact, rtol=2e-2, atol=1e-6)
    amp.backward()
    assert all(torch.isfinite(f.grad).all() for f in half["student"].values())
