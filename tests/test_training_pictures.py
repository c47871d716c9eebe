"""Pictures of training: validation overlays per epoch and the loss-term curves, on real MONAI/ignite engines."""

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, ValidationHandler, from_engine
from monai.losses import DiceCELoss
from monai.transforms import Activationsd, AsDiscreted, Compose
from PIL import Image

from lightvessel_monai.engines import DistillationTrainer
from lightvessel_monai.errors import ConfigKeyError
from lightvessel_monai.handlers import (
    AdversarialUpdateHandler,
    FinalValidationHandler,
    LearningCurveHandler,
    ValidationOverlayHandler,
)
from lightvessel_monai.losses import AdversarialSimilarityDistillation, FeatureSimilarityDistillation
from lightvessel_monai.networks import SimilarityDiscriminator
from lightvessel_monai.reporting.learning_curves import read_curve, read_losses

from conftest import tiny_unet
from test_bundle import run_bundle

SHAPES = {2: (16, 16), 3: (16, 16, 8)}
BEST_SLICE = 5  # the 3D labels have most of their foreground in this slice


def _cases(spatial_dims: int, n: int = 4) -> list[dict]:
    """``n`` cases with a blob of foreground (in 3D mostly in slice ``BEST_SLICE``), a field of view and a file name."""
    g = torch.Generator().manual_seed(1)
    shape = SHAPES[spatial_dims]
    cases = []
    for i in range(n):
        label = torch.zeros(1, *shape)
        if spatial_dims == 2:
            label[0, 3 + i : 9 + i, 4:12] = 1
        else:
            label[0, 2:14, 3 + i : 12, BEST_SLICE] = 1
            label[0, 6:8, 6:8, 2] = 1
        image = label * 0.6 + 0.4 * torch.rand(1, *shape, generator=g)
        fov = torch.zeros(1, *shape)
        fov[0, 1:-1, 1:-1] = 1
        cases.append(
            {"image": MetaTensor(image, meta={"filename_or_obj": f"/data/img_{i}.png"}), "label": label, "fov": fov}
        )
    return cases


def _net(spatial_dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    return conv(1, 2, 3, padding=1)


def _evaluator(spatial_dims, net, handlers=(), decollate=True, batch_size=2):
    loader = DataLoader(_cases(spatial_dims), batch_size=batch_size, shuffle=False)
    if decollate:  # as validate#postprocessing in train.json: one-hot prediction and label
        post = Compose(
            [
                Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[2, 2]),
            ]
        )
    else:

        def post(batch):  # the same on a batched, not decollated output
            batch["pred"] = torch.nn.functional.one_hot(batch["pred"].argmax(1), 2).movedim(-1, 1).float()
            batch["label"] = torch.cat([1 - batch["label"], batch["label"]], 1)
            return batch

    return SupervisedEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=net,
        postprocessing=post,
        decollate=decollate,
        key_val_metric={"dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        val_handlers=list(handlers),
    )


def _view(array: np.ndarray) -> np.ndarray:
    """What the handler draws of a case: the 3D slice ``BEST_SLICE``, transposed."""
    return (array if array.ndim == 2 else array[..., BEST_SLICE]).T


def _pixels(path) -> np.ndarray:
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB"))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_overlay_per_validation_is_named_by_the_trainer_epoch(tmp_path, spatial_dims):
    net = _net(spatial_dims)
    overlay = ValidationOverlayHandler(str(tmp_path), num_cases=3, mask_key="fov")
    evaluator = _evaluator(spatial_dims, net, [overlay])
    train = DataLoader(_cases(spatial_dims), batch_size=2)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=train,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[FinalValidationHandler(validator=evaluator, interval=2, epoch_level=True)],
    )
    trainer.run()
    # validation after epoch 2 (interval) and after epoch 3 (the final one): named by the trainer's epoch
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["epoch_2.png", "epoch_3.png"]
    assert overlay.written == [str(tmp_path / "overlays" / f"epoch_{k}.png") for k in (2, 3)]
    pixels = _pixels(tmp_path / "overlays" / "epoch_3.png")
    assert pixels.shape[1] >= 800 and pixels.shape[0] >= 600 and pixels.std() > 10  # a drawn figure, not blank

    # the drawn cases are the first three of the loader (across its batches of two), with the final weights
    cases = _cases(spatial_dims)
    assert [c["title"].split(",")[0] for c in overlay.cases] == ["img_0.png", "img_1.png", "img_2.png"]
    net.eval()
    for drawn, case in zip(overlay.cases, cases, strict=False):
        with torch.no_grad():
            pred = net(case["image"].as_tensor()[None])[0].argmax(0).numpy()
        label = case["label"][0].numpy()
        np.testing.assert_array_equal(drawn["label"], _view(label))
        np.testing.assert_array_equal(drawn["pred"], _view(pred))
        np.testing.assert_allclose(drawn["image"], _view(case["image"][0].numpy()), rtol=1e-6)
        np.testing.assert_array_equal(drawn["mask"], _view(case["fov"][0].numpy() > 0))
        inter = float(((label > 0) & (pred > 0)).sum())
        assert drawn["dice"] == pytest.approx(2 * inter / ((label > 0).sum() + (pred > 0).sum()))
        if spatial_dims == 3:
            assert drawn["title"].endswith(f"slice {BEST_SLICE}")  # the slice with the most annotated foreground


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_overlay_changes_with_the_prediction_only(tmp_path, spatial_dims):
    net = _net(spatial_dims)
    overlay = ValidationOverlayHandler(str(tmp_path), num_cases=2, name="teacher")
    evaluator = _evaluator(spatial_dims, net, [overlay])
    path = tmp_path / "overlays" / "teacher_epoch_7.png"
    evaluator.run(7)  # what ValidationHandler does at the trainer's epoch 7
    first, first_cases = _pixels(path), overlay.cases
    evaluator.run(7)  # same weights, same picture
    np.testing.assert_array_equal(_pixels(path), first)
    with torch.no_grad():  # negated logits: the argmax flips everywhere
        for p in net.parameters():
            p.neg_()
    evaluator.run(7)
    second = _pixels(path)
    assert second.shape == first.shape and not np.array_equal(second, first)
    for a, b in zip(first_cases, overlay.cases, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(b["pred"], 1 - a["pred"])
    # a batched (not decollated) evaluator output gives the same cases
    batched = ValidationOverlayHandler(str(tmp_path / "batched"), num_cases=2)
    _evaluator(spatial_dims, net, [batched], decollate=False).run(7)
    for a, b in zip(overlay.cases, batched.cases, strict=True):
        for key in ("image", "label", "pred"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
    assert (tmp_path / "batched" / "overlays" / "epoch_7.png").is_file()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_overlay_draws_the_listed_channels_side_by_side(tmp_path, spatial_dims):
    # a 2.5D slab: 5 channels, drawn as channels 1-3 with the errors on the middle one (LVSD300: 2-4 of 7)
    cases = _cases(spatial_dims, n=2)
    for case in cases:
        case["image"] = MetaTensor(torch.cat([case["image"] * (k + 1) for k in range(5)]), meta=case["image"].meta)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    net = conv(5, 2, 3, padding=1)
    overlay = ValidationOverlayHandler(str(tmp_path), num_cases=2, image_channels=[1, 2, 3])
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[2, 2]),
        ]
    )
    SupervisedEvaluator(
        device="cpu",
        val_data_loader=DataLoader(cases, batch_size=2),
        network=net,
        postprocessing=post,
        val_handlers=[overlay],
    ).run(4)
    for drawn, case in zip(overlay.cases, cases, strict=True):
        assert list(drawn["channels"]) == ["channel 1", "channel 2", "channel 3"]
        for k in (1, 2, 3):
            np.testing.assert_allclose(drawn["channels"][f"channel {k}"], _view(case["image"][k].numpy()), rtol=1e-6)
        np.testing.assert_allclose(drawn["image"], _view(case["image"][2].numpy()), rtol=1e-6)  # the middle one
    one_panel = ValidationOverlayHandler(str(tmp_path / "mean"), num_cases=1)
    wide, narrow = _pixels(tmp_path / "overlays" / "epoch_4.png"), None
    SupervisedEvaluator(
        device="cpu", val_data_loader=DataLoader(cases[:1]), network=net, postprocessing=post, val_handlers=[one_panel]
    ).run(4)
    narrow = _pixels(tmp_path / "mean" / "overlays" / "epoch_4.png")
    assert wide.shape[1] > 1.4 * narrow.shape[1]  # six panels a row against four
    with pytest.raises(ConfigKeyError, match="image_channels"):
        ValidationOverlayHandler(str(tmp_path), image_channels=[])
    too_many = ValidationOverlayHandler(str(tmp_path / "bad"), num_cases=1, image_channels=[7])
    with pytest.raises(ConfigKeyError, match="5 channels"):
        SupervisedEvaluator(
            device="cpu",
            val_data_loader=DataLoader(cases[:1]),
            network=net,
            postprocessing=post,
            val_handlers=[too_many],
        ).run(1)


def test_overlay_disabled_or_no_cases_writes_nothing(tmp_path):
    net = _net(2)
    for handler in (ValidationOverlayHandler(str(tmp_path), enabled=False), ValidationOverlayHandler(str(tmp_path), 0)):
        _evaluator(2, net, [handler]).run(1)
        assert not handler.cases and not list(tmp_path.iterdir())
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigKeyError, match="num_cases"):
            ValidationOverlayHandler(str(tmp_path), num_cases=bad)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_csv_holds_every_term_of_every_iteration(tmp_path, spatial_dims):
    torch.manual_seed(0)
    size = (32,) * spatial_dims
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(3):
        image = torch.rand((2, 1, *size), generator=g)
        data.append({"image": image, "label": (image > 0.7).float()})
    teacher, student = tiny_unet(spatial_dims, features=(8, 8, 16, 16, 32, 8)), tiny_unet(spatial_dims)
    taps = {"enc1": "conv_0", "dec1": "upcat_1"}
    asd = AdversarialSimilarityDistillation(SimilarityDiscriminator(spatial_dims, in_channels=2, channels=(4, 8)))
    critic = AdversarialUpdateHandler(asd, torch.optim.Adam(asd.discriminator.parameters(), lr=1e-3), start_iteration=2)
    val = DataLoader([{"image": d["image"][0], "label": d["label"][0]} for d in data], batch_size=1)
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[2, 2]),
        ]
    )
    dice = MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
    evaluator = SupervisedEvaluator("cpu", val, student, postprocessing=post, key_val_metric={"val_mean_dice": dice})
    curve = LearningCurveHandler(evaluator, str(tmp_path), name="student")
    seen = []
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=data,
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-2),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        teacher=teacher,
        teacher_taps=taps,
        student_taps=taps,
        distillation={
            "fsd": {"loss": FeatureSimilarityDistillation([["enc1", "dec1"]]), "weight": 1.0},
            "asd": {"loss": asd, "weight": 0.1, "handlers": [critic]},
        },
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True), curve],
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append(
            (
                e.state.iteration,
                e.state.epoch,
                {k: float(torch.as_tensor(v).detach()) for k, v in e.state.output.items() if k.startswith("loss")},
            )
        ),
    )
    trainer.run()
    terms, rows = read_losses(curve.losses_csv_path)
    assert terms == ["loss", "loss_seg", "loss_fsd", "loss_asd", "loss_disc"]  # loss_disc joined at iteration 2
    assert rows == seen and [r[:2] for r in rows] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert "loss_disc" not in rows[0][2] and all("loss_disc" in r[2] for r in rows[1:])
    first_line = open(curve.losses_csv_path).read().splitlines()[1]
    assert first_line.endswith(",") and first_line.startswith("1,1,")  # the critic's term is empty before it starts
    assert [(i, e) for i, e, _ in read_curve(curve.csv_path)] == [(3, 1), (6, 2)]
    with Image.open(curve.losses_png_path) as png:
        assert png.format == "PNG" and png.size[0] >= 600 and png.size[1] >= 500
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.integration
def test_a_bundle_run_draws_its_pictures(tmp_path):
    root = tmp_path / "bundle"
    run_bundle("training", ["train.json"], root, {"max_epochs": 3, "val_interval": 2, "overlay_cases": 2})
    eval_dir = root / "eval"
    # student: validations after epoch 2 and after the last epoch 3; the teacher (1 epoch) after its epoch 1
    assert sorted(p.name for p in (eval_dir / "overlays").iterdir()) == [
        "epoch_2.png",
        "epoch_3.png",
        "teacher_epoch_1.png",
    ]
    for png in (eval_dir / "overlays").iterdir():
        assert _pixels(png).shape[0] >= 400
    for name, expected in (("student", {"loss_seg", "loss_fsd", "loss_asd", "loss_disc"}), ("teacher", {"loss"})):
        terms, rows = read_losses(eval_dir / f"{name}_losses.csv")
        assert expected <= set(terms) and rows and all(np.isfinite(list(r[2].values())).all() for r in rows)
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
        assert _pixels(eval_dir / f"{name}_losses.png").shape[1] >= 600
    assert [r[0] for r in read_losses(eval_dir / "student_losses.csv")[1]][-1] == read_curve(
        eval_dir / "student_curve.csv"
    )[-1][0]
