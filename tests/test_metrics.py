"""clDice and the per-case segmentation metrics on tiny hand-made masks, against hand-computed values, 2D and 3D."""

import math

import numpy as np
import pytest
import torch

from lightvessel_monai.metrics import (
    METRIC_NAMES,
    ClDiceMetric,
    cldice_score,
    compute_cldice,
    segmentation_metrics,
    skeleton,
)


def _onehot(mask: np.ndarray) -> torch.Tensor:
    """Boolean ``(*spatial)`` -> one-hot ``(1, 2, *spatial)`` float."""
    m = torch.as_tensor(np.asarray(mask, dtype=bool)).float()
    return torch.stack([1 - m, m])[None]


def _line_2d() -> tuple[np.ndarray, np.ndarray]:
    """Label: the full middle row of a 5x5 image (5 px). Prediction: its left 3 px plus a stray pixel at (0, 0)."""
    label = np.zeros((5, 5), bool)
    label[2, :] = True
    pred = np.zeros((5, 5), bool)
    pred[2, :3] = True
    pred[0, 0] = True
    return pred, label


def _tube_3d() -> np.ndarray:
    """A 3x3-section tube along the last axis, voxels (2..4, 2..4, 1..7) of a 7x7x9 volume."""
    tube = np.zeros((7, 7, 9), bool)
    tube[2:5, 2:5, 1:8] = True
    return tube


# ------------------------------------------------------------------------------------------------------ clDice


def test_cldice_of_a_line_2d():
    pred, label = _line_2d()
    # 1-px lines are their own skeletons: S(P) = 4 px of which 3 in L, S(L) = 5 px of which 3 in P
    np.testing.assert_array_equal(skeleton(label), label)
    tprec, tsens = 3 / 4, 3 / 5
    assert cldice_score(pred, label) == pytest.approx(2 * tprec * tsens / (tprec + tsens))  # 2/3
    assert cldice_score(label, label) == 1.0


def test_cldice_rewards_the_centerline_of_a_thick_vessel_2d():
    label = np.zeros((7, 11), bool)
    label[2:5, 1:10] = True  # a 3-px wide bar
    pred = np.zeros_like(label)
    pred[2:4, 1:10] = True  # its upper 2 rows hold the whole skeleton of the bar
    assert skeleton(label).sum() > 0 and not (skeleton(label) & ~pred).any()
    assert cldice_score(pred, label) == 1.0  # every centerline pixel covered, no predicted centerline outside L
    dice = 2 * pred.sum() / (pred.sum() + label.sum())
    assert dice == pytest.approx(0.8)


def test_cldice_of_a_tube_3d():
    label = _tube_3d()
    # Lee's 3D thinning reduces the tube to its axis, voxels (3, 3, 2..6)
    expected = np.zeros_like(label)
    expected[3, 3, 2:7] = True
    np.testing.assert_array_equal(skeleton(label), expected)
    axis = np.zeros_like(label)
    axis[3, 3, 1:8] = True
    assert cldice_score(axis, label) == 1.0  # Dice would be 2*7/(7+63) = 0.2
    short = np.zeros_like(label)
    short[3, 3, 1:4] = True  # covers 2 of the 5 skeleton voxels (z = 2, 3)
    tprec, tsens = 1.0, 2 / 5
    assert cldice_score(short, label) == pytest.approx(2 * tprec * tsens / (tprec + tsens))  # 4/7


def test_cldice_empty_cases():
    empty, (pred, label) = np.zeros((5, 5), bool), _line_2d()
    assert math.isnan(cldice_score(empty, empty))
    assert math.isnan(cldice_score(pred, empty))
    assert cldice_score(empty, empty, ignore_empty=False) == 1.0
    assert cldice_score(pred, empty, ignore_empty=False) == 0.0
    assert cldice_score(empty, label) == 0.0
    disjoint = np.zeros((5, 5), bool)
    disjoint[0, :] = True
    assert cldice_score(disjoint, label) == 0.0


def test_compute_cldice_per_image_and_class():
    pred, label = _line_2d()
    y_pred = torch.cat([_onehot(pred), _onehot(label)])  # batch of 2: the partial line, then a perfect prediction
    y = torch.cat([_onehot(label), _onehot(label)])
    scores = compute_cldice(y_pred, y, include_background=False)
    assert scores.shape == (2, 1)
    np.testing.assert_allclose(scores[:, 0].numpy(), [2 / 3, 1.0], rtol=1e-6)
    assert compute_cldice(y_pred, y).shape == (2, 2)
    with pytest.raises(ValueError, match="shapes differ"):
        compute_cldice(y_pred, y[:1])


def test_cldice_metric_accumulates_and_skips_empty_ground_truth():
    pred, label = _line_2d()
    empty = np.zeros_like(label)
    metric = ClDiceMetric(include_background=False, get_not_nans=True)
    metric(y_pred=_onehot(pred), y=_onehot(label))  # 2/3
    metric(y_pred=[_onehot(label)[0]], y=[_onehot(label)[0]])  # decollated list form: 1
    metric(y_pred=_onehot(pred), y=_onehot(empty))  # nan, left out
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx((2 / 3 + 1.0) / 2)
    assert not_nans.item() == 2
    metric.reset()
    tube = _tube_3d()
    metric(y_pred=_onehot(tube), y=_onehot(tube))
    assert metric.aggregate()[0].item() == 1.0


# ------------------------------------------------------------------------------------------ segmentation metrics


def _confusion_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4x4: label = the 2x2 top-left square; pred = (0, 0..2) and (3, 3); mask = the 3x3 top-left block."""
    label = np.zeros((4, 4), bool)
    label[:2, :2] = True
    pred = np.zeros((4, 4), bool)
    pred[0, :3] = True
    pred[3, 3] = True
    mask = np.zeros((4, 4), bool)
    mask[:3, :3] = True
    return pred, label, mask


def test_confusion_metrics_without_mask_2d():
    pred, label, _ = _confusion_case()
    m = segmentation_metrics(_onehot(pred), _onehot(label))
    tp, fp, fn, tn = 2, 2, 2, 10
    assert set(m) == set(METRIC_NAMES)
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 0.5
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))  # 1/3
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))  # 0.5
    assert m["specificity"] == pytest.approx(tn / (tn + fp))  # 5/6
    assert m["accuracy"] == pytest.approx((tp + tn) / 16)  # 0.75


def test_confusion_metrics_inside_a_mask_2d():
    pred, label, mask = _confusion_case()
    m = segmentation_metrics(_onehot(pred), _onehot(label), mask=mask)
    tp, fp, fn, tn = 2, 1, 2, 4  # the stray (3, 3) and the last row/column are outside
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 4/7
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))  # 2/5
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))  # 4/5
    assert m["accuracy"] == pytest.approx((tp + tn) / 9)  # 2/3
    # a binary (1, 1, H, W) input and a (1, 1, H, W) mask give the same numbers
    binary = segmentation_metrics(
        torch.as_tensor(pred)[None, None].float(), torch.as_tensor(label)[None, None].float(), mask=mask[None, None]
    )
    assert binary == pytest.approx(m, nan_ok=True)


def test_confusion_metrics_inside_a_mask_3d():
    label = np.zeros((2, 2, 3), bool)
    label[0, 0, :] = True  # 3 voxels
    pred = np.zeros_like(label)
    pred[0, 0, :2] = True
    pred[1, 1, 2] = True
    mask = np.ones_like(label)
    mask[..., 2] = False  # the last z slice is outside: drops one FN (0, 0, 2) and the FP (1, 1, 2)
    tp, fp, fn, tn = 2, 0, 0, 6
    m = segmentation_metrics(_onehot(pred), _onehot(label), mask=mask)
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["sensitivity"] == 1.0
    assert m["specificity"] == pytest.approx(tn / (tn + fp)) and m["accuracy"] == 1.0
    full = segmentation_metrics(_onehot(pred), _onehot(label))
    tp, fp, fn, tn = 2, 1, 1, 8
    assert full["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert full["specificity"] == pytest.approx(tn / (tn + fp))
    assert full["accuracy"] == pytest.approx((tp + tn) / 12)


def _square(shape, rows, cols) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def test_hd95_of_offset_squares_2d():
    label = _square((10, 12), (2, 6), (2, 6))
    pred = _square((10, 12), (2, 6), (5, 9))  # shifted by 3 columns
    # edge pixels of pred: 4 at distance 0, 2 at 1, 2 at 2, 4 at 3 from the label's edge (and symmetrically);
    # the 95th percentile of [0,0,0,0,1,1,2,2,3,3,3,3] is 3
    assert segmentation_metrics(_onehot(pred), _onehot(label))["hd95"] == pytest.approx(3.0)
    # spacing (rows 2.0, columns 0.5): the shift is along the columns
    assert segmentation_metrics(_onehot(pred), _onehot(label), spacing=(2.0, 0.5))["hd95"] == pytest.approx(1.5)


def test_hd95_is_a_percentile_not_the_maximum():
    label = _square((12, 12), (2, 6), (2, 6))
    pred = label.copy()
    pred[5, 11] = True  # a stray pixel 6 px from the square's edge pixel (5, 5)
    # pred edges: 12 at distance 0 and the stray at 6; linear 95th percentile of 13 values: 0.4 * 6 (the max is 6)
    m = segmentation_metrics(_onehot(pred), _onehot(label))
    assert m["hd95"] == pytest.approx(2.4, rel=1e-5)
    # outside a mask the stray is background: a perfect prediction
    mask = np.ones((12, 12), bool)
    mask[:, 9:] = False
    inside = segmentation_metrics(_onehot(pred), _onehot(label), mask=mask)
    assert inside["hd95"] == 0.0 and inside["cldice"] == 1.0 and inside["dice"] == 1.0
    assert inside["specificity"] == 1.0 and m["specificity"] < 1.0


def test_hd95_of_offset_cubes_3d():
    label = np.zeros((8, 8, 10), bool)
    label[2:6, 2:6, 2:6] = True
    pred = np.zeros_like(label)
    pred[2:6, 2:6, 4:8] = True  # shifted by 2 along z
    # pred surface: 24 voxels at 0, 16 at 1, 16 at 2 (its far face); the 95th percentile is 2
    m = segmentation_metrics(_onehot(pred), _onehot(label))
    assert m["hd95"] == pytest.approx(2.0)
    assert m["dice"] == pytest.approx(2 * 32 / 128)


def test_cldice_in_segmentation_metrics_2d_and_3d():
    pred, label = _line_2d()
    assert segmentation_metrics(_onehot(pred), _onehot(label))["cldice"] == pytest.approx(2 / 3)
    tube = _tube_3d()
    axis = np.zeros_like(tube)
    axis[3, 3, 1:8] = True
    m = segmentation_metrics(_onehot(axis), _onehot(tube))
    assert m["cldice"] == 1.0 and m["dice"] == pytest.approx(0.2)


def test_segmentation_metrics_undefined_and_bad_input():
    empty = np.zeros((6, 6), bool)
    m = segmentation_metrics(_onehot(empty), _onehot(empty))
    assert math.isnan(m["dice"]) and math.isnan(m["cldice"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0
    with pytest.raises(ValueError, match="mask has no pixel"):
        segmentation_metrics(_onehot(empty), _onehot(empty), mask=empty)
    with pytest.raises(ValueError, match="mask has shape"):
        segmentation_metrics(_onehot(empty), _onehot(empty), mask=np.ones((5, 6)))
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(_onehot(empty), _onehot(np.zeros((6, 5), bool)))
    with pytest.raises(ValueError, match=r"\(1, K, H, W\)"):
        segmentation_metrics(torch.zeros(2, 6, 6), torch.zeros(2, 6, 6))
