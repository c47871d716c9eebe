"""teacher_precision: the teacher's forward under CPU bfloat16 autocast, what the terms then see, and the run key."""

import pytest
import torch

from lightvessel_monai.engines import DistillationTrainer
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.losses import DistillationMethod, FeatureSimilarityDistillation, KnowledgeDistillation
from lightvessel_monai.pipeline.stages import run_settings

from conftest import tiny_unet

TAPS = {"enc1": "conv_0", "dec1": "upcat_1"}


def _trainer(dims, precision, seen):
    torch.manual_seed(0)
    teacher = tiny_unet(dims, features=(8, 8, 16, 16, 32, 8))
    student = tiny_unet(dims)

    class Spy(KnowledgeDistillation):
        def forward(self, inputs):
            seen.append((inputs.teacher_pred.clone(), {k: v.clone() for k, v in inputs.teacher_features.items()}))
            return super().forward(inputs)

    size = (32,) * dims
    data = [{"image": torch.rand(2, 1, *size), "label": (torch.rand(2, 1, *size) > 0.5).float()}]
    return DistillationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.0),  # lr 0: both runs see the same student
        loss_function=lambda p, y: p.mean() * 0,
        teacher=teacher,
        teacher_taps=TAPS,
        student_taps=TAPS,
        distillation={
            "kd": {"loss": Spy(softmax=True)},
            "fsd": {"loss": FeatureSimilarityDistillation([["enc1", "dec1"]])},
        },
        teacher_precision=precision,
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_a_bfloat16_teacher_hands_the_terms_float32_values_close_to_the_float32_teachers(dims):
    exact, fast = [], []
    _trainer(dims, "float32", exact).run()
    trainer = _trainer(dims, "bfloat16", fast)
    trainer.run()
    (pred32, feats32), (pred16, feats16) = exact[0], fast[0]
    assert pred16.dtype == torch.float32 and all(v.dtype == torch.float32 for v in feats16.values())
    assert feats16.keys() == feats32.keys() == {"enc1", "dec1"}
    # computed in bfloat16 (8 bits of mantissa): near the float32 teacher's, and not equal to it
    assert not torch.equal(pred16, pred32)
    torch.testing.assert_close(pred16, pred32, atol=0.05 * float(pred32.abs().max()), rtol=0.05)
    assert torch.isfinite(trainer.state.output["loss"]).all()


def test_an_unknown_precision_is_a_one_line_error():
    with pytest.raises(ConfigKeyError, match="teacher_precision' must be one of float32, bfloat16, got 'fp16'"):
        _trainer(2, "fp16", [])


def test_the_precision_enters_the_run_key_only_when_it_is_not_float32():
    method = DistillationMethod({"kd": {"loss": KnowledgeDistillation(), "weight": 1}})
    base = run_settings({"seed": 0}, "abc", method)
    assert run_settings({"seed": 0}, "abc", method, teacher_precision="float32") == base
    assert "teacher_precision" not in base
    assert run_settings({"seed": 0}, "abc", method, teacher_precision="bfloat16") == {
        **base,
        "teacher_precision": "bfloat16",
    }
