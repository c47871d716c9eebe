"""Unlabelled images in training (issue 27): the batch, the stand-in label, mixup, the stream, the datalist."""

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    RandFlipd,
    RandSpatialCropSamplesd,
    ScaleIntensityd,
)
from PIL import Image

from lightvessel_monai.data.unlabeled import (
    UNLABELED,
    UnlabeledStream,
    labelled_samples,
    unlabeled_datalist,
    unlabeled_transform,
)
from lightvessel_monai.engines import DistillationTrainer, MixedBatch, cutmix, mixup, stand_in_label
from lightvessel_monai.errors import ConfigKeyError, DataError
from lightvessel_monai.losses import KnowledgeDistillation, PseudoLabelLoss

from conftest import distillation_inputs, tiny_unet


class RecordingKD(KnowledgeDistillation):
    """The real KD term, keeping the inputs it was called with (to check what the trainer hands a term)."""

    def forward(self, inputs):
        self.seen = inputs
        return super().forward(inputs)


def one_step(spatial_dims, image, label, prepare_batch=None, term=None):
    """One training iteration of a KD trainer on one batch; returns the trainer and the term."""
    torch.manual_seed(0)
    teacher = tiny_unet(spatial_dims, features=(8, 8, 16, 16, 32, 8))
    torch.manual_seed(1)
    student = tiny_unet(spatial_dims)
    term = term or RecordingKD()
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": image, "label": label}],
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.0),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        teacher=teacher,
        distillation={"kd": {"loss": term, "weight": 1.0}},
        **({"prepare_batch": prepare_batch} if prepare_batch is not None else {}),
    )
    trainer.run()
    return trainer, term, teacher


def batch(spatial_dims, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((4, 1) + (size,) * spatial_dims, generator=g)
    label = (image > 0.6).float()
    label[2:] = UNLABELED  # samples 2 and 3 have no annotation
    return image, label


def test_labelled_samples_reads_the_sentinel_even_with_a_zero_padded_border():
    label = torch.zeros(3, 1, 4, 4)
    label[1] = UNLABELED
    label[2] = UNLABELED
    label[2, 0, 0, :] = 0  # a rotated patch's zero-padded corner
    assert labelled_samples(label).tolist() == [True, False, False]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_segmentation_loss_ignores_unlabelled_content_and_the_terms_do_not(spatial_dims):
    image, label = batch(spatial_dims)
    other = image.clone()
    other[2:] = torch.rand_like(other[2:])  # change only the unlabelled samples
    first, _, _ = one_step(spatial_dims, image, label)
    second, _, _ = one_step(spatial_dims, other, label)
    out1, out2 = first.state.output, second.state.output
    assert float(out1["loss_seg"]) == pytest.approx(float(out2["loss_seg"]), abs=1e-6)
    assert abs(float(out1["loss_kd"]) - float(out2["loss_kd"])) > 1e-5
    # and the segmentation loss is that of the two labelled samples alone, by hand
    student = first.network
    with torch.no_grad():
        pred = student(image[:2])
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(pred, label[:2])
    assert float(out1["loss_seg"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_term_receives_the_teachers_prediction_where_there_is_no_label(spatial_dims):
    image, label = batch(spatial_dims, seed=3)
    _, term, teacher = one_step(spatial_dims, image, label)
    seen = term.seen
    assert seen.labelled.tolist() == [True, True, False, False]
    with torch.no_grad():
        teacher_mask = teacher(image).argmax(1, keepdim=True).float()
    assert torch.equal(seen.label[:2], label[:2])
    assert torch.equal(seen.label[2:], teacher_mask[2:])
    assert (seen.label >= 0).all()


def test_a_labelled_batch_gives_the_terms_the_label_untouched():
    image, label = batch(2)
    label[2:] = (image[2:] > 0.6).float()
    _, term, _ = one_step(2, image, label)
    assert term.seen.labelled is None and torch.equal(term.seen.label, label)


def test_stand_in_label_follows_the_labels_format():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])  # (1, 2, 1, 2): classes 0 then 1
    assert stand_in_label(logits, torch.zeros(1, 1, 1, 2)).tolist() == [[[[0.0, 1.0]]]]
    onehot = stand_in_label(logits, torch.zeros(1, 2, 1, 2))
    assert onehot.tolist() == [[[[1.0, 0.0]], [[0.0, 1.0]]]]
    assert stand_in_label(torch.tensor([[[[0.5, -0.5]]]]), torch.zeros(1, 1, 1, 2)).tolist() == [[[[1.0, 0.0]]]]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_mixup_target_is_the_teachers_output_on_the_mixed_input(spatial_dims):
    image, label = batch(spatial_dims, seed=5)
    label[2:] = (image[2:] > 0.6).float()  # all labelled: mixing is what removes the labels
    prepare = MixedBatch(mixup_prob=1.0, mixup_alpha=1.0)
    torch.manual_seed(0)
    _, term, teacher = one_step(spatial_dims, image, label, prepare_batch=prepare)
    lam, partner, mixed = (prepare.last_mix[k] for k in ("lam", "partner", "mixed"))
    # by hand: x_i' = lam_i x_i + (1 - lam_i) x_partner(i), lam_i >= 1/2 where mixed, 1 elsewhere
    by_hand = torch.stack([lam[i] * image[i] + (1 - lam[i]) * image[partner[i]] for i in range(4)])
    assert torch.allclose(term.seen.image, by_hand, atol=1e-6)
    assert bool(mixed.all()) and (lam >= 0.5).all() and (partner != torch.arange(4)).all()  # prob 1: all mixed
    with torch.no_grad():
        target = teacher(by_hand)
    assert torch.allclose(term.seen.teacher_pred, target, atol=1e-5)
    # a mixed sample has no label: the segmentation loss skips it, the terms get the teacher's mask
    assert term.seen.labelled.tolist() == (~mixed).tolist()
    assert torch.equal(term.seen.label[mixed], target.argmax(1, keepdim=True).float()[mixed])


def test_mixup_draws_from_the_global_rng_so_a_seed_repeats_it():
    image, label = torch.rand(6, 1, 8, 8), torch.zeros(6, 1, 8, 8)
    torch.manual_seed(4)
    a = mixup(image, label, 0.5, 1.0)
    torch.manual_seed(4)
    b = mixup(image, label, 0.5, 1.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert (a[1][a[4]] == UNLABELED).all() and (a[1][~a[4]] == 0).all()
    assert sorted(a[3].tolist()) == list(range(6)) and (a[3] != torch.arange(6)).all()  # a cycle, no self-pair


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cutmix_pastes_one_box_of_the_partner_with_its_label(spatial_dims):
    size = (12, 10) if spatial_dims == 2 else (6, 8, 10)
    image = torch.arange(4, dtype=torch.float32).reshape(4, 1, *(1,) * spatial_dims) + torch.zeros(4, 1, *size)
    label = torch.stack([torch.full((1, *size), float(v)) for v in (0, 1, 0, UNLABELED)])  # sample 3 unlabelled
    torch.manual_seed(3)
    out, new_label, kept, partner, mixed = cutmix(image, label, 1.0, 1.0)
    assert bool(mixed.all()) and (partner != torch.arange(4)).all()
    for i in range(4):
        from_partner = out[i] == float(partner[i])  # every voxel holds its own value or its partner's
        assert bool((from_partner | (out[i] == float(i))).all())
        # the pasted voxels form one axis-aligned box, its share of the patch is 1 - kept
        idx = torch.nonzero(from_partner[0])
        lo, hi = idx.amin(0), idx.amax(0)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
        assert bool(from_partner[0][box].all())
        assert abs(idx.shape[0] / from_partner[0].numel() - (1 - float(kept[i]))) < 1e-6
        assert 0.5 - 0.15 <= float(kept[i]) <= 1.0  # the sample keeps the larger part (rounded box sides)
        # the label is pasted with the image
        expected = torch.where(from_partner, label[int(partner[i])], label[i])
        assert torch.equal(new_label[i], expected)
    # a sample with a pasted unlabelled part is unlabelled; two annotated parts keep an exact label
    assert labelled_samples(new_label).tolist() == [
        bool((label[i] >= 0).all() and (label[int(partner[i])] >= 0).all()) for i in range(4)
    ]


def test_cutmix_through_mixed_batch_repeats_with_the_seed_and_keeps_unmixed_samples():
    image, label = torch.rand(5, 1, 16, 16), (torch.rand(5, 1, 16, 16) > 0.5).float()
    prepare = MixedBatch(mixup_prob=0.5, mixup_mode="cutmix")
    torch.manual_seed(8)
    a = prepare({"image": image, "label": label})
    mix_a = dict(prepare.last_mix)
    torch.manual_seed(8)
    b = prepare({"image": image, "label": label})
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    still = ~mix_a["mixed"]
    assert torch.equal(a[0][still], image[still]) and torch.equal(a[1][still], label[still])
    with pytest.raises(ConfigKeyError, match="mixup_mode"):
        MixedBatch(mixup_prob=1.0, mixup_mode="blend")


def test_pseudo_label_loss_is_the_segmentation_loss_on_the_teachers_mask_of_unlabelled_samples():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    inputs = distillation_inputs(student_pred=student, teacher_pred=teacher)
    assert float(PseudoLabelLoss()(inputs)) == 0.0  # nothing unlabelled: the trainer's loss covers it
    inputs.labelled = torch.tensor([True, False, True, False])
    inputs.label = stand_in_label(teacher, torch.zeros(4, 1, 8, 8))
    expected = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)(student[[1, 3]], inputs.label[[1, 3]])
    assert float(PseudoLabelLoss()(inputs)) == pytest.approx(float(expected), rel=1e-6)


# ------------------------------------------------------------------------------------------ datalist and stream


def write_pngs(folder, count, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"u{i}.png"
        Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_unlabeled_datalist_reads_the_datalist_and_the_glob_and_checks_the_files(tmp_path):
    paths = write_pngs(tmp_path / "u", 3)
    datalist = tmp_path / "dataset.json"
    datalist.write_text('{"training": [], "unlabeled": [{"image": "u/u0.png"}]}')
    entries = unlabeled_datalist(str(datalist), str(tmp_path / "u" / "*.png"), spatial_dims=2, image_channels=1)
    assert [e["image"] for e in entries] == [paths[0]] + paths
    zoomed = unlabeled_datalist(str(datalist), str(tmp_path / "u" / "*.png"), glob_zoom=1.1)
    assert [e.get("zoom") for e in zoomed] == [None, 1.1, 1.1, 1.1]  # the other scanner's frames only
    assert unlabeled_datalist(str(datalist).replace("dataset", "none"), None) == []
    (tmp_path / "u" / "u1.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        unlabeled_datalist(None, str(tmp_path / "u" / "*.png"))
    assert "u1.png" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="matches no file"):
        unlabeled_datalist(None, str(tmp_path / "nothing" / "*.png"))
    with pytest.raises(DataError, match="smaller|size"):
        unlabeled_datalist(None, str(tmp_path / "u" / "u0.png"), min_shape=[64, 64])


def small_pipeline():
    preprocessing = Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            EnsureChannelFirstd(["image", "label"]),
            ScaleIntensityd("image"),
        ]
    )
    augmentation = [
        RandSpatialCropSamplesd(["image", "label"], roi_size=[16, 16], num_samples=2, random_size=False),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
    ]
    return unlabeled_transform(preprocessing, [], augmentation, seed=0)


def test_the_stream_draws_zoomed_unlabelled_samples_and_resumes_to_the_same_draws(tmp_path):
    entries = [{"image": p, "zoom": 0.5} for p in write_pngs(tmp_path, 5, size=(64, 64))]
    torch.manual_seed(0)
    stream = UnlabeledStream(entries, small_pipeline(), images_per_step=2)
    first = stream.draw()
    assert len(first) == 4  # 2 images x 2 crops
    assert all(tuple(s["image"].shape) == (1, 16, 16) and (s["label"] == UNLABELED).all() for s in first)
    for _ in range(3):  # the order spans epochs: 8 images drawn from 5, a new order after the fifth
        stream.draw()
    state = stream.state_dict()
    rng = torch.get_rng_state()
    expected = [stream.draw() for _ in range(3)]
    resumed = UnlabeledStream(entries, small_pipeline(), images_per_step=2)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    again = [resumed.draw() for _ in range(3)]
    for a, b in zip(expected, again, strict=True):
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))


def test_the_zoom_rescales_the_unlabelled_image(tmp_path):
    entries = [{"image": p, "zoom": 0.5} for p in write_pngs(tmp_path, 1, size=(64, 48))]
    item = small_pipeline().transforms[0](dict(entries[0]))
    assert tuple(item["image"].shape) == (1, 64, 48)
    zoomed = small_pipeline().transforms[1](item)
    assert tuple(zoomed["image"].shape) == (1, 32, 24) and "zoom" not in zoomed
    same = small_pipeline().transforms[1]({"image": item["image"]})
    assert tuple(same["image"].shape) == (1, 64, 48)


def test_ranks_draw_different_unlabelled_images_from_the_same_order(tmp_path):
    paths = write_pngs(tmp_path, 6, size=(32, 32))
    entries = [{"image": p} for p in paths]
    plain = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    pipeline = unlabeled_transform(plain, [], [], seed=0)
    drawn = []
    for rank in (0, 1):
        torch.manual_seed(3)  # under torchrun every rank holds the same global RNG
        stream = UnlabeledStream(entries, pipeline, images_per_step=2)
        drawn.append([s["image"].flatten()[:8].tolist() for s in stream.draw(rank=rank, world_size=2)])
    assert len(drawn[0]) == len(drawn[1]) == 2
    assert not any(a == b for a in drawn[0] for b in drawn[1])  # four different images in the step
