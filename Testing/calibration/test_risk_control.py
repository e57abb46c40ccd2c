"""Conformal risk control of the referral threshold: exact, against brute force, MAPIE's CRC bound, and its
guarantee on simulated exchangeable cases."""

import math

import numpy as np
import pytest

from SegUncertaintyLib.calibration.risk_control import (
    conformal_risk_threshold,
    error_values,
    missed_error_fraction,
)
from SegUncertaintyLib.core.errors import UsageError


def random_cases(rng, n, ties=False):
    """n cases' sorted error values: some cases without errors, sizes 1-40, optionally heavy ties."""
    cases = []
    for _ in range(n):
        m = 0 if rng.random() < 0.15 else int(rng.integers(1, 40))
        values = rng.beta(2, 1 + 3 * rng.random(), m)
        cases.append(np.sort(np.round(values, 1) if ties else values))
    return cases


def brute_force(cases, alpha):
    """max lambda over every error value, every midpoint and +-inf with the bound <= alpha, by definition."""
    n = len(cases)
    values = np.unique(np.concatenate(cases + [np.zeros(0)]))
    candidates = np.concatenate([[-math.inf], values, (values[1:] + values[:-1]) / 2, values + 1e-9, [math.inf]])
    best = -math.inf
    for lam in candidates:
        losses = [np.mean(c < lam) if c.size else 0.0 for c in cases]
        if n / (n + 1) * np.mean(losses) + 1 / (n + 1) <= alpha:
            best = max(best, lam)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    cases = random_cases(rng, int(rng.integers(5, 40)), ties=seed % 2 == 1)
    alpha = float(rng.choice([0.05, 0.1, 0.2, 0.4]))
    fitted = conformal_risk_threshold(cases, alpha)
    assert fitted.threshold == brute_force(cases, alpha)
    if math.isfinite(fitted.threshold):
        losses = [missed_error_fraction(c, fitted.threshold) for c in cases]
        assert fitted.mean_loss == pytest.approx(np.mean(losses))
        assert fitted.bound <= alpha


def test_edge_cases_flag_nothing_or_everything():
    no_errors = [np.zeros(0)] * 20
    assert conformal_risk_threshold(no_errors, 0.1).threshold == math.inf
    few = [np.array([0.3])] + [np.zeros(0)] * 29  # missing every error: (1 + 1) / 31 <= 0.1
    assert conformal_risk_threshold(few, 0.1).threshold == math.inf
    small_n = [np.array([0.5, 0.6])] * 5  # 1 / 6 > 0.1: no threshold meets the bound
    assert conformal_risk_threshold(small_n, 0.1).threshold == -math.inf
    with pytest.raises(UsageError):
        conformal_risk_threshold(small_n, 1.5)
    with pytest.raises(UsageError):
        conformal_risk_threshold([], 0.1)


def test_error_values_are_the_uncertainty_where_prediction_and_reference_differ():
    u = np.array([[0.1, 0.9], [0.5, 0.2]])
    pred = np.array([[1, 1], [0, 0]])
    ref = np.array([[1, 0], [1, 0]])
    assert error_values(u, pred, ref).tolist() == [0.5, 0.9]
    assert missed_error_fraction(np.array([0.5, 0.9]), 0.6) == 0.5  # 0.5 < 0.6 is missed, 0.9 flagged
    assert missed_error_fraction(np.array([0.5, 0.9]), 0.5) == 0.0  # u >= lambda is flagged
    with pytest.raises(UsageError):
        error_values(u, pred, ref[:1])


def test_agrees_with_mapie_crc_on_a_grid():
    """MAPIE's CRC (get_r_hat_plus, method "crc", and find_best_predict_param) on MAPIE's own recall risk,
    sets {u > g} on a grid g: its choice is the largest grid point below lambda_hat (continuous values)."""
    from mapie.risk_control import recall
    from mapie.risk_control.methods import find_best_predict_param, get_r_hat_plus

    rng = np.random.default_rng(7)
    cases = [c for c in random_cases(rng, 60) if c.size]  # MAPIE refuses a case without errors
    grid = np.linspace(0, 1, 201)
    risks = np.array([[recall.get_value_and_effective_sample_size(np.ones(c.size, int), (c > g).astype(int))[0]
                       for g in grid] for c in cases])
    for alpha in (0.05, 0.1, 0.2):
        _, r_hat_plus = get_r_hat_plus(risks, grid, "crc", None, None, None)
        mapie_choice = find_best_predict_param(grid, r_hat_plus, np.array([alpha]))[0]
        ours = conformal_risk_threshold(cases, alpha).threshold
        assert mapie_choice == grid[grid < ours].max()


def test_guarantee_on_simulated_exchangeable_cases():
    """1000 random splits of 2000 exchangeable cases (n = 19 for calibration, the rest for test): the mean
    test loss at lambda_hat lies in [alpha - 1/(n+1), alpha] up to Monte Carlo error (3 standard errors)."""
    rng = np.random.default_rng(0)
    pool, m, n, alpha = 2000, 50, 19, 0.1
    scale = rng.uniform(0.5, 3.0, pool)[:, None]  # per-case difficulty: exchangeable, not identical
    values = np.sort(rng.beta(2.0, scale * np.ones((pool, m))), axis=1)
    has_errors = rng.random(pool) > 0.1
    cases = [v if e else np.zeros(0) for v, e in zip(values, has_errors, strict=True)]
    split_means = []
    for _ in range(1000):
        order = rng.permutation(pool)
        lam = conformal_risk_threshold([cases[i] for i in order[:n]], alpha).threshold
        test = order[n:]
        losses = np.where(has_errors[test], (values[test] < lam).mean(1), 0.0)
        split_means.append(losses.mean())
    split_means = np.array(split_means)
    mean, se = split_means.mean(), split_means.std(ddof=1) / np.sqrt(len(split_means))
    assert alpha - 1 / (n + 1) - 3 * se <= mean <= alpha + 3 * se, (mean, se)
