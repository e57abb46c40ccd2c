"""Dice/HD95, the dilated foreground box and uncertainty by confusion, against analytic cases and scipy."""

import math

import numpy as np
import pytest
from scipy import ndimage

from SegUncertaintyLib.evaluation.quality import (
    CONFUSION_EDGES,
    confusion_histograms,
    dice_hd95,
    dilated_foreground_box,
    out_of_plane_axis,
    uncertainty_by_confusion,
)


def cube(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def test_shifted_cube_hd95_in_mm_uses_the_spacing():
    ref = cube((20, 30, 30), (5, 5, 5), (15, 15, 15))
    pred = np.roll(ref, 3, axis=2)  # shift 3 voxels along x
    result = dice_hd95(pred, ref, (2.0, 1.0, 1.5))
    assert result["dice"] == pytest.approx(2 * 7 / 20)
    assert result["hd95_mm"] == pytest.approx(3 * 1.5)
    # cross-check with scipy's distance transform: the largest surface distance is the shift
    dist = ndimage.distance_transform_edt(~ref, sampling=(2.0, 1.0, 1.5))
    assert dist[pred].max() == pytest.approx(result["hd95_mm"])


def test_empty_masks_follow_the_documented_rules():
    empty, full = np.zeros((4, 4, 4), bool), cube((4, 4, 4), (1, 1, 1), (3, 3, 3))
    assert dice_hd95(empty, empty, (1, 1, 1)) == {"dice": 1.0, "hd95_mm": 0.0}
    one_sided = dice_hd95(full, empty, (1, 1, 1))
    assert one_sided["dice"] == 0.0 and math.isnan(one_sided["hd95_mm"])


def test_dilated_box_adds_8_mm_in_plane_and_2_slices_out_of_plane():
    spacing = (5.0, 1.0, 2.0)  # z is the slice axis (largest spacing)
    assert out_of_plane_axis(spacing) == 0
    ref = np.zeros((20, 40, 40), bool)
    ref[8, 15, 15] = ref[10, 20, 18] = True
    box = dilated_foreground_box(ref, spacing)
    expected = cube(ref.shape, (8 - 2, 15 - 8, 15 - 4), (10 + 3, 20 + 9, 18 + 5))
    assert np.array_equal(box, expected)
    near_edge = np.zeros((20, 40, 40), bool)
    near_edge[0, 0, 39] = True
    assert np.array_equal(dilated_foreground_box(near_edge, spacing), cube(ref.shape, (0, 0, 35), (3, 9, 40)))
    assert not dilated_foreground_box(np.zeros((3, 3, 3), bool), spacing).any()


def test_uncertainty_by_confusion_groups():
    pred = np.array([1, 1, 0, 0, 1], bool)
    ref = np.array([1, 0, 1, 0, 1], bool)
    u = np.array([0.1, 0.9, 0.7, 0.0, 0.3])
    out = uncertainty_by_confusion(u, pred, ref)
    assert out["TP"]["voxels"] == 2 and out["TP"]["mean"] == pytest.approx(0.2)
    assert out["FP"]["mean"] == 0.9 and out["FN"]["mean"] == 0.7 and out["TN"]["median"] == 0.0
    restricted = uncertainty_by_confusion(u, pred, ref, region=np.array([0, 1, 1, 1, 0], bool))
    assert restricted["TP"]["voxels"] == 0 and math.isnan(restricted["TP"]["mean"])


def test_confusion_histograms_count_every_voxel_of_each_group_and_match_numpy():
    rng = np.random.default_rng(3)
    u = rng.uniform(-0.1, 1.1, (6, 7, 8))  # out-of-range values are clipped into the end bins
    pred, ref = rng.random(u.shape) > 0.5, rng.random(u.shape) > 0.4
    region = rng.random(u.shape) > 0.3
    hist = confusion_histograms(u, pred, ref, region)
    groups = {"TP": pred & ref, "FP": pred & ~ref, "FN": ~pred & ref, "TN": ~pred & ~ref}
    for name, mask in groups.items():
        assert hist[name].sum() == (mask & region).sum()
        expected = np.histogram(np.clip(u[mask & region], 0, 1), bins=CONFUSION_EDGES)[0]
        np.testing.assert_array_equal(hist[name], expected)
    assert sum(h.sum() for h in hist.values()) == region.sum()
