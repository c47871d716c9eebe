import copy

import pytest
import torch
from torch import nn

from lightvessel_monai.handlers import AdversarialUpdateHandler
from lightvessel_monai.losses import (
    AdversarialSimilarityDistillation,
    DistillationInputs,
    correlation_map,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)
from lightvessel_monai.networks import SimilarityDiscriminator


def snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: nn.Module) -> set:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


class Quadratic(nn.Module):
    """D(x) = 0.5 * sum(x^2) per sample, so grad_x D = x."""

    def forward(self, x):
        return 0.5 * x.flatten(1).pow(2).sum(1, keepdim=True)


def test_gradient_penalty_hand_computed():
    real = torch.ones(2, 1, 2, 2)
    fake = torch.zeros(2, 1, 2, 2)
    # interpolates are 0.25 and 0.75 everywhere: gradient norms sqrt(4 * 0.25^2) = 0.5 and 1.5
    alpha = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    gp = gradient_penalty(Quadratic(), real, fake, alpha=alpha)
    torch.testing.assert_close(gp, torch.tensor(((0.5 - 1) ** 2 + (1.5 - 1) ** 2) / 2))
    # an AMP-style scale does not change the penalty
    torch.testing.assert_close(gradient_penalty(Quadratic(), real, fake, alpha=alpha, scale=1024.0), gp)


def test_gradient_penalty_linear_critic():
    w = torch.tensor([[3.0, 4.0]])
    critic = nn.Linear(2, 1, bias=False)
    critic.weight.data.copy_(w)
    gp = gradient_penalty(critic, torch.randn(5, 2), torch.randn(5, 2))
    torch.testing.assert_close(gp, torch.tensor((5.0 - 1.0) ** 2))


def test_gan_losses_hand_computed():
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-0.5], [1.5]])
    torch.testing.assert_close(discriminator_loss(real, fake, "wgan-gp"), torch.tensor(0.5 - 1.0))
    torch.testing.assert_close(discriminator_loss(real, fake, "hinge"), torch.tensor((0 + 1) / 2 + (0.5 + 2.5) / 2))
    torch.testing.assert_close(
        discriminator_loss(real, fake, "lsgan"), torch.tensor(0.5 * (1 + 1) / 2 + 0.5 * (0.25 + 2.25) / 2)
    )
    torch.testing.assert_close(generator_loss(fake, "wgan-gp"), torch.tensor(-0.5))
    torch.testing.assert_close(generator_loss(fake, "lsgan"), torch.tensor(0.5 * (2.25 + 0.25) / 2))
    with pytest.raises(ValueError, match="kind"):
        generator_loss(fake, "vanilla")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_correlation_maps(spatial_dims):
    shape = (2, 3) + (4,) * spatial_dims
    pred = torch.randn(shape)
    label = torch.randint(0, 3, (2, 1) + (4,) * spatial_dims)
    prod = correlation_map(label, pred, "product")
    assert prod.shape == shape
    prob = torch.softmax(pred, 1)
    onehot = torch.nn.functional.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    torch.testing.assert_close(prod, onehot * prob)
    cat = correlation_map(label, pred, "concat")
    assert cat.shape == (2, 6) + (4,) * spatial_dims
    binary = correlation_map(label.clamp(max=1), pred[:, :1], "product", activation="sigmoid")
    torch.testing.assert_close(binary, label.clamp(max=1).float() * torch.sigmoid(pred[:, :1]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_discriminator_shapes_and_spectral_norm(spatial_dims):
    disc = SimilarityDiscriminator(spatial_dims, in_channels=2, channels=(4, 8))
    for size in (16, 24):
        assert disc(torch.randn(3, 2, *([size] * spatial_dims))).shape == (3, 1)
    assert any("parametrizations" in name for name, _ in disc.named_parameters())


def _conv(spatial_dims, cin, cout):
    return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(cin, cout, 3, padding=1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_discriminator_step_changes_only_discriminator(spatial_dims):
    student, teacher = _conv(spatial_dims, 1, 2), _conv(spatial_dims, 1, 2)
    disc = SimilarityDiscriminator(spatial_dims, in_channels=2, channels=(4, 8))
    asd = AdversarialSimilarityDistillation(disc)
    handler = AdversarialUpdateHandler(asd, torch.optim.Adam(disc.parameters(), lr=1e-2), d_steps=2)
    x = torch.randn(2, 1, *([8] * spatial_dims))
    label = (x > 0).long()
    before = {n: snapshot(m) for n, m in (("student", student), ("teacher", teacher), ("disc", disc))}
    real, fake = asd.critic_inputs(label, teacher(x).detach(), student(x).detach())
    loss = handler.step(real, fake)
    assert isinstance(loss, float)
    assert changed(before["disc"], disc), "the critic was not updated"
    assert not changed(before["student"], student) and not changed(before["teacher"], teacher)
    assert all(p.grad is None for p in student.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_student_step_does_not_touch_discriminator(spatial_dims):
    student = _conv(spatial_dims, 1, 2)
    disc = SimilarityDiscriminator(spatial_dims, in_channels=2, channels=(4, 8))
    asd = AdversarialSimilarityDistillation(disc, gan_loss="hinge")
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x = torch.randn(2, 1, *([8] * spatial_dims))
    label = (x > 0).long()
    before_disc, before_student = snapshot(disc), snapshot(student)
    loss = asd(DistillationInputs(image=x, label=label, student_pred=student(x), teacher_pred=student(x).detach()))
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in disc.parameters()), "the student term must not write critic gradients"
    assert all(p.requires_grad for p in disc.parameters()), "the critic must be trainable again afterwards"
    assert not changed(before_disc, disc)
    assert changed(before_student, student)


def test_warmup_silences_the_student_term():
    disc = SimilarityDiscriminator(2, in_channels=2, channels=(4,))
    asd = AdversarialSimilarityDistillation(disc, warmup_iterations=5)
    pred = torch.randn(1, 2, 8, 8, requires_grad=True)
    inputs = DistillationInputs(image=pred, label=torch.zeros(1, 1, 8, 8), student_pred=pred, teacher_pred=pred)
    inputs.iteration = 5
    assert asd(inputs).item() == 0.0
    inputs.iteration = 6
    assert asd(inputs).item() != 0.0


def test_handler_state_roundtrip():
    disc = SimilarityDiscriminator(2, in_channels=2, channels=(4,))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    handler = AdversarialUpdateHandler(AdversarialSimilarityDistillation(disc), opt)
    real, fake = torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8)
    handler.step(real, fake)
    state = copy.deepcopy(handler.state_dict())
    disc2 = SimilarityDiscriminator(2, in_channels=2, channels=(4,))
    handler2 = AdversarialUpdateHandler(
        AdversarialSimilarityDistillation(disc2), torch.optim.Adam(disc2.parameters(), lr=1e-2)
    )
    handler2.load_state_dict(state)
    for a, b in zip(disc.parameters(), disc2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # the optimiser moments came along: one more identical step gives identical weights
    torch.manual_seed(1)  # the gradient penalty draws random interpolation weights
    handler.step(real, fake)
    torch.manual_seed(1)
    handler2.step(real, fake)
    for a, b in zip(disc.parameters(), disc2.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigmoid": True}, "ASD: set exactly one of softmax=True and sigmoid=True, got softmax=True, sigmoid=True"),
        ({"softmax": False}, "set exactly one of softmax=True and sigmoid=True"),
        ({"softmax": "yes"}, "set exactly one of softmax=True and sigmoid=True"),
        ({"correlation": "sum"}, "correlation must be one of product, concat, got 'sum'"),
        ({"gan_loss": "wgan"}, "gan_loss must be one of"),
    ],
)
def test_asd_refuses_unknown_settings_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialSimilarityDistillation(SimilarityDiscriminator(2, 2), **kwargs)
    with pytest.raises(ValueError, match="must be one of"):  # the map function checks them too
        correlation_map(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), **{"activation": "x"})
