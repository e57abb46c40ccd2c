"""Predicted Dice: CV+ intervals (MAPIE) cover the true Dice at about 1 - alpha on simulated cases."""

import numpy as np
import pytest

from SegUncertaintyLib.calibration.predicted_dice import fit_dice_predictor, logit_dice
from SegUncertaintyLib.core.errors import UsageError


def simulate(rng, n):
    """Two scores that drive logit(Dice) linearly, one irrelevant, noise; 5 % empty predictions (Dice 0,
    one score undefined)."""
    scores = rng.normal(0, 1, (n, 3))
    empty = rng.random(n) < 0.05
    logit = 2.0 - 1.2 * scores[:, 0] + 0.6 * scores[:, 1] + rng.normal(0, 0.5, n)
    dice = np.where(empty, 0.0, 1 / (1 + np.exp(-logit)))
    scores[empty, 0] = np.nan
    return scores, empty, dice


@pytest.mark.slow
def test_coverage_over_many_seeds():
    """200 seeds, n = 40 calibration and 200 test cases each, alpha = 0.1: the mean coverage lies within
    Monte Carlo error (3 standard errors) of [1 - alpha, 1 - alpha + 0.04], far above CV+'s worst case
    1 - 2 alpha - ...; intervals are narrower than the Dice's own spread."""
    alpha, coverages, widths = 0.1, [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        x, e, d = simulate(rng, 40)
        predictor = fit_dice_predictor(x, e, d, alpha=alpha, seed=seed)
        xt, et, dt = simulate(rng, 200)
        value, interval = predictor.predict(xt, et)
        assert np.all((interval[:, 0] <= value) & (value <= interval[:, 1]))
        coverages.append(np.mean((interval[:, 0] <= dt) & (dt <= interval[:, 1])))
        widths.append(np.median(interval[:, 1] - interval[:, 0]))
    mean, se = np.mean(coverages), np.std(coverages, ddof=1) / np.sqrt(len(coverages))
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 0.04 + 3 * se, (mean, se)
    assert np.median(widths) < 0.5


def test_prediction_tracks_the_scores_and_flags_empty():
    rng = np.random.default_rng(3)
    x, e, d = simulate(rng, 60)
    predictor = fit_dice_predictor(x, e, d, alpha=0.2)
    value, interval = predictor.predict(np.array([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]),
                                        np.array([False, False, True]))
    assert value[0] > 0.9 > 0.6 > value[1]  # logit 2 + 2.4 vs 2 - 2.4
    assert value[2] < 0.2 and interval[2, 0] == 0.0  # an empty prediction predicts a Dice near 0
    assert predictor.coverage == pytest.approx(0.8) and predictor.folds == 10
    assert logit_dice(np.array([0.0, 0.5, 1.0])) == pytest.approx([-6.9068, 0.0, 6.9068], abs=1e-4)
    with pytest.raises(UsageError):
        fit_dice_predictor(x, e, d * 2, alpha=0.1)


def test_too_few_cases_for_alpha_give_the_whole_range_not_a_crash():
    """MAPIE offers no interval on fewer than 1/alpha cases: the 10-case minimum of calibrate makes 9-case
    inner folds for the out-of-fold predictions (this raised ValueError: calibrate exited 1 on 10 cases)."""
    from SegUncertaintyLib.evaluation.calibration_fit import out_of_fold_dice

    rng = np.random.default_rng(5)
    x, e, d = simulate(rng, 10)
    e[:] = False
    d = np.where(d == 0, 0.5, d)
    small = fit_dice_predictor(x[:9], e[:9], d[:9], alpha=0.1)
    value, interval = small.predict(x[9:], e[9:])
    assert np.array_equal(interval, [[0.0, 1.0]]) and 0 < value[0] < 1
    full = fit_dice_predictor(x, e, d, alpha=0.1)
    assert np.all(np.diff(full.predict(x[:3], e[:3])[1], axis=1) < 1)  # 10 cases: finite intervals again
    out, intervals = out_of_fold_dice(x, e, d, alpha=0.1, folds=10, seed=0)
    assert out.shape == (10,) and np.all((out > 0) & (out < 1))
    assert np.array_equal(intervals, np.tile([0.0, 1.0], (10, 1)))  # each fold fitted on 9 cases
    assert np.corrcoef(out, d)[0, 1] > 0.3  # the held-out predictions still follow the Dice
