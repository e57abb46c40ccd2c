"""Calibration metrics against analytic cases, MONAI's calibration binning and scikit-learn."""

import numpy as np
import pytest
import torch
from monai.metrics.calibration import calibration_binning
from sklearn.metrics import brier_score_loss, log_loss

from SegUncertaintyLib.core.errors import InputImageError
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
    """Bad arrays raise the library's input error (exit 3 on the command line), not a bare ValueError."""
    with pytest.raises(InputImageError, match="shape"):
        BinStats.from_arrays(np.zeros(3), np.zeros(4))
    with pytest.raises(InputImageError, match="within"):
        BinStats.from_arrays(np.array([0.5, np.nan]), np.zeros(2))
    with pytest.raises(InputImageError, match="reference labels"):
        BinStats.top_label(np.full((2, 3), 0.5), np.array([0, 1, 2]))
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


def multiclass_case(seed: int, n: int = 5000, k: int = 3):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k) * 0.5, size=n)  # (N, K)
    y = np.array([rng.choice(k, p=row) for row in p])  # calibrated by construction
    return p, y


@pytest.mark.parametrize("k", [2, 3, 4])
def test_top_label_ece_follows_mehrtash_eq5_by_hand_and_torchmetrics(k):
    """Eq. 5 computed by hand with numpy (bins ((m-1)/M, m/M], top-label confidence, accuracy of the
    predicted label) and torchmetrics' multiclass_calibration_error (top label, right-closed bins)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    p, y = multiclass_case(k, k=k)
    p[:7] = np.eye(k)[0] * 0.4 + 0.6 / k  # some confidences land exactly on bin edges
    p[7:9] = np.eye(k)[1]  # confidence 1: the last bin (0.9, 1]
    stats = BinStats.top_label(p.T, y)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for m in range(1, 11):
        inside = (conf > (m - 1) / 10) & (conf <= m / 10)
        if inside.any():
            ece += inside.sum() / len(y) * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    assert stats.ece() == pytest.approx(ece, abs=1e-12)
    # torchmetrics works in float32, which moves values that sit exactly on an edge: compare away from edges
    rest = BinStats.top_label(p[9:].T, y[9:])
    reference = multiclass_calibration_error(torch.tensor(p[9:]), torch.tensor(y[9:]), num_classes=k, n_bins=10,
                                             norm="l1")
    assert rest.ece() == pytest.approx(float(reference), abs=1e-6)


def test_top_label_nll_and_brier_follow_mehrtash_eqs_3_and_4():
    """NLL against scikit-learn's multi-class log_loss (natural log); Brier eq. 4 (mean over classes too)
    by hand; pooled cases equal one big case."""
    p, y = multiclass_case(5, k=4)
    stats = BinStats.top_label(p.T, y)
    assert stats.nll() == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-6)
    assert stats.brier() == pytest.approx(np.mean(np.mean((p - np.eye(4)[y]) ** 2, axis=1)))
    halves = BinStats.top_label(p[:2000].T, y[:2000]) + BinStats.top_label(p[2000:].T, y[2000:])
    assert halves.ece() == pytest.approx(stats.ece()) and halves.nll() == pytest.approx(stats.nll())


def test_two_class_top_label_differs_from_foreground_convention():
    """For two classes the top-label confidence is max(p, 1 - p): a voxel with p = 0.2 and label 0 is 80 %
    confident and correct, whereas the foreground convention bins it at 0.2 with accuracy 0."""
    p = np.array([0.2, 0.2, 0.9, 0.9])
    y = np.array([0, 0, 1, 0])
    top = BinStats.top_label(np.stack([1 - p, p]), y)
    assert list(top.reliability()["count"]) == [2, 2]  # bins (0.7, 0.8] and (0.8, 0.9]
    assert top.ece() == pytest.approx(0.5 * abs(1 - 0.8) + 0.5 * abs(0.5 - 0.9))
    assert BinStats.from_arrays(p, y).ece() == pytest.approx(0.5 * 0.2 + 0.5 * abs(0.5 - 0.9))
    with pytest.raises(InputImageError):
        BinStats.top_label(np.stack([1 - p, p]), np.array([0, 2, 1, 0]))
