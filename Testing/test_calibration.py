"""Calibration metrics against analytic cases, MONAI's calibration binning and scikit-learn."""

import numpy as np
import pytest
import torch
from monai.metrics.calibration import calibration_binning
from sklearn.metrics import brier_score_loss, log_loss

from SegUncertaintyLib.evaluation.calibration import BinStats, calibration_split, probability_from_uncertainty


def random_case(seed: int, n: int = 20_000, bias: float = 0.0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = rng.random(n) < np.clip(p + bias, 0, 1)  # calibrated when bias = 0
    return p, y


def test_perfectly_calibrated_probabilities_have_ece_near_zero():
    p, y = random_case(0, n=400_000)
    assert BinStats.from_arrays(p, y).ece() < 0.005


def test_constant_shift_gives_ece_equal_to_the_shift():
    p, y = random_case(1, n=400_000, bias=0.0)
    # labels drawn from p, probabilities reported 0.1 lower (clipped at 0): ECE close to 0.1
    shifted = np.clip(p - 0.1, 0, 1)
    assert BinStats.from_arrays(shifted, y).ece() == pytest.approx(0.1, abs=0.01)


def test_hand_built_bins():
    p = np.array([0.05, 0.05, 0.95, 0.95, 1.0])  # p = 1 belongs to the last bin [0.9, 1 + 1e-8)
    y = np.array([0, 1, 1, 1, 1])
    s = BinStats.from_arrays(p, y)
    # bin 0: conf 0.05, acc 0.5, 2 voxels; bin 9: conf 0.9667, acc 1, 3 voxels
    assert s.ece() == pytest.approx(2 / 5 * 0.45 + 3 / 5 * (1 - 2.9 / 3))
    assert s.mce() == pytest.approx(0.45)
    assert list(s.reliability()["count"]) == [2, 3]


def test_matches_monai_calibration_binning_and_expected_error():
    p, y = random_case(2, bias=0.15)
    ours = BinStats.from_arrays(p, y)
    mean_p, mean_y, counts = calibration_binning(torch.tensor(p)[None, None], torch.tensor(y, dtype=torch.float64)
                                                 [None, None], num_bins=10, right=False)
    keep = counts[0, 0] > 0
    r = ours.reliability()
    assert np.allclose(r["count"], counts[0, 0][keep].numpy())
    assert np.allclose(r["confidence"], mean_p[0, 0][keep].numpy())
    assert np.allclose(r["accuracy"], mean_y[0, 0][keep].numpy())
    from monai.metrics import CalibrationErrorMetric

    metric = CalibrationErrorMetric(num_bins=10, include_background=True)
    metric(torch.tensor(p)[None, None], torch.tensor(y, dtype=torch.float64)[None, None])
    assert ours.ece() == pytest.approx(metric.aggregate().item(), rel=1e-6)


def test_nll_and_brier_match_scikit_learn():
    p, y = random_case(3, bias=-0.2)
    s = BinStats.from_arrays(p, y)
    assert s.brier() == pytest.approx(brier_score_loss(y, p))
    assert s.nll() == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-9)


def test_pooled_statistics_equal_one_big_case_and_mask_selects():
    cases = [random_case(s, n=5000, bias=0.1 * s) for s in range(3)]
    pooled = sum((BinStats.from_arrays(p, y) for p, y in cases), BinStats.empty())
    everything = BinStats.from_arrays(np.concatenate([c[0] for c in cases]), np.concatenate([c[1] for c in cases]))
    assert pooled.summary() == pytest.approx(everything.summary())
    p, y = cases[0]
    mask = p > 0.5
    assert BinStats.from_arrays(p, y, mask).summary() == pytest.approx(BinStats.from_arrays(p[mask], y[mask]).summary())


def test_bad_input_and_empty_region():
    with pytest.raises(ValueError, match="shape"):
        BinStats.from_arrays(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="within"):
        BinStats.from_arrays(np.array([0.5, np.nan]), np.zeros(2))
    assert np.isnan(BinStats.from_arrays(np.zeros(3), np.zeros(3), np.zeros(3, bool)).ece())


def test_probability_from_uncertainty_follows_paper_001():
    pred = np.array([1, 1, 0, 0])
    q = np.array([0.0, 1.0, 0.0, 0.4])
    assert np.allclose(probability_from_uncertainty(pred, q), [1.0, 0.5, 0.0, 0.2])


def test_signed_error_is_the_unweighted_bin_mean_of_accuracy_minus_confidence():
    """Over-confident probabilities (0.8 where 50 % are foreground) give a negative signed error, and the
    value is the plain mean over non-empty bins, as in paper 001's code (not count-weighted)."""
    rng = np.random.default_rng(0)
    p = np.r_[np.full(1000, 0.8), np.full(10, 0.15)]
    y = np.r_[rng.random(1000) < 0.5, np.ones(10, bool)]
    stats = BinStats.from_arrays(p, y)
    expected = ((y[:1000].mean() - 0.8) + (1.0 - 0.15)) / 2
    assert stats.signed_error() == pytest.approx(expected)
    assert BinStats.from_arrays(np.full(100, 0.9), rng.random(100) < 0.5).signed_error() < 0


def test_calibration_split_follows_paper_001():
    """Tolerance = 90th percentile of the methods' pooled errors; subjects averaged over methods."""
    pooled = [-0.01, 0.02]  # percentile 90 of two values: -0.01 + 0.9 * 0.03 = 0.017
    subjects = np.array([[0.06, 0.04],    # mean 0.05 > 0.017: under-confident
                         [-0.02, -0.04],  # mean -0.03 < -0.017: over-confident
                         [0.01, -0.01],   # mean 0: well calibrated
                         [0.02, 0.015]])  # mean 0.0175 > 0.017: under-confident
    split = calibration_split(pooled, subjects)
    assert split["tolerance"] == pytest.approx(0.017)
    assert (split["underconfident"], split["overconfident"], split["calibrated"]) == (0.5, 0.25, 0.25)
    negative = calibration_split([-0.02], subjects)  # one method, negative pooled error: |tolerance|
    assert negative["tolerance"] == pytest.approx(0.02)
    assert negative["underconfident"] + negative["overconfident"] + negative["calibrated"] == pytest.approx(1.0)


def test_matches_torchmetrics_binary_calibration_error_away_from_bin_edges():
    """torchmetrics bins (a, b] with edges k/10; paper 001's code bins [a, b) with edges k(1 + 1e-8)/10.
    On continuous probabilities the ECE is the same; only values in (k/10, k(1 + 1e-8)/10) change bin."""
    torchmetrics = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(5)
    p = rng.random(50_000)
    y = rng.random(50_000) < p**1.5
    ours = BinStats.from_arrays(p, y).ece()
    theirs = torchmetrics.binary_calibration_error(torch.tensor(p), torch.tensor(y.astype(np.int64)), n_bins=10,
                                                   norm="l1")
    assert ours == pytest.approx(float(theirs), abs=1e-12)
    between = np.r_[np.full(10, 0.3 + 1e-10), np.full(10, 0.25)]  # one bin for us, two for torchmetrics
    truth = np.r_[np.zeros(10, bool), np.ones(10, bool)]
    edge_theirs = float(torchmetrics.binary_calibration_error(torch.tensor(between), torch.tensor(truth.astype(int)),
                                                              n_bins=10, norm="l1"))
    assert BinStats.from_arrays(between, truth).ece() == pytest.approx(abs(0.5 - (0.3 + 0.25) / 2))
    assert edge_theirs == pytest.approx(0.5 * (0.3 + 1e-10) + 0.5 * 0.75)
