"""Cohort measurements against scipy/scikit-learn and hand-built cases."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

from SegUncertaintyLib.evaluation.cohort_stats import (
    generalized_energy_distance,
    logit_dice,
    ood_auroc,
    score_quality_correlation,
)
from SegUncertaintyLib.inference.scores import pairwise_iou


def test_monotone_score_has_spearman_minus_one_and_nans_are_dropped():
    cv = np.array([0.01, 0.05, 0.2, 0.9, 0.3])
    dice = 0.95 - 0.5 * cv  # higher CV, lower Dice, linearly
    dice[4] = np.nan
    out = score_quality_correlation(cv, dice)
    assert out["n"] == 4 and out["spearman"] == pytest.approx(-1.0) and out["pearson"] == pytest.approx(-1.0)
    assert -1.0 < out["pearson_logit"] < -0.8
    assert out["pearson_p"] == pytest.approx(2 / 24)  # exact: only the observed pairing of 4! reaches r = -1
    assert math.isnan(score_quality_correlation(cv[:2], dice[:2])["spearman"])


def test_logit_dice():
    assert logit_dice(np.array([0.5]))[0] == pytest.approx(0.0)
    assert logit_dice(np.array([1.0]))[0] == pytest.approx(np.log(0.999 / 0.001))


@pytest.mark.parametrize("seed", range(4))
def test_ood_auroc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(40) < 0.4
    score = np.round(rng.random(40) + 0.5 * y, 1)  # rounded: ties
    assert ood_auroc(score, y) == pytest.approx(roc_auc_score(y, score))
    assert math.isnan(ood_auroc(score, np.zeros(40, bool)))


def test_energy_distance_zero_for_identical_sets_and_two_for_disjoint_single_masks():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    out = generalized_energy_distance([a, a], [a])
    assert out["ged2"] == pytest.approx(0.0)
    out = generalized_energy_distance([a], [~a])
    assert out["ged2"] == pytest.approx(2.0) and out["cross"] == 1.0


def test_diversity_term_equals_the_subject_score_definition():
    rng = np.random.default_rng(0)
    samples = [rng.random((6, 7)) < 0.5 for _ in range(5)]
    flat = np.stack([s.ravel() for s in samples]).astype(np.int64)
    expected = float((1 - pairwise_iou(flat @ flat.T)).mean())
    assert generalized_energy_distance(samples, samples[:1])["ged_sample_diversity"] == pytest.approx(expected)


def test_exact_permutation_p_value_for_three_cases_is_one_third():
    """n = 3, perfectly monotone: 2 of the 3! = 6 pairings reach |rho| = 1, so the exact two-sided p is 1/3
    (the asymptotic t-test used before printed 0). Enumerated here by hand with itertools."""
    from itertools import permutations

    score, dice = np.array([0.1, 0.2, 0.3]), np.array([0.9, 0.8, 0.7])
    out = score_quality_correlation(score, dice)
    assert out["spearman"] == pytest.approx(-1.0)
    hits = [abs(spearmanr(score, np.array(p)).statistic) >= 1 - 1e-12 for p in permutations(dice)]
    assert np.mean(hits) == pytest.approx(1 / 3)
    assert out["spearman_p"] == pytest.approx(1 / 3) and out["pearson_p"] == pytest.approx(1 / 3)
    assert math.isnan(out["spearman_ci95"][0])  # fewer than 5 cases: no interval


@pytest.mark.parametrize("n", [5, 6, 7])
def test_permutation_p_values_are_exact_enumerations(n):
    """Against a brute-force enumeration of all n! pairings (Spearman, Pearson on logit Dice)."""
    from itertools import permutations

    rng = np.random.default_rng(n)
    score, dice = rng.random(n), rng.uniform(0.5, 0.99, n)
    out = score_quality_correlation(score, dice)
    rho = spearmanr(score, dice).statistic
    null = [spearmanr(score, np.array(p)).statistic for p in permutations(dice)]
    assert out["spearman"] == pytest.approx(rho)
    # scipy's two-sided p = 2 min(P(T >= t), P(T <= t)), capped at 1
    greater = np.mean(np.array(null) >= rho - 1e-12)
    less = np.mean(np.array(null) <= rho + 1e-12)
    assert out["spearman_p"] == pytest.approx(min(1.0, 2 * min(greater, less)))
    r = pearsonr(score, logit_dice(dice)).statistic
    assert out["pearson_logit"] == pytest.approx(r)


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    score = rng.random(20)
    dice = 0.95 - 0.3 * score + rng.normal(0, 0.05, 20)
    a, b = score_quality_correlation(score, dice), score_quality_correlation(score, dice)
    assert a["spearman_ci95"] == b["spearman_ci95"]  # same seed, same interval
    low, high = a["spearman_ci95"]
    assert -1 <= low < a["spearman"] < high <= 1 and high < 0  # a clear negative correlation
    # the interval is the percentile interval of scipy.stats.bootstrap with the same seed
    from scipy.stats import bootstrap

    from SegUncertaintyLib.evaluation.cohort_stats import N_RESAMPLES, SEED, spearman
    ref = bootstrap((score, dice), spearman, paired=True, vectorized=True, n_resamples=N_RESAMPLES,
                    method="percentile", random_state=SEED).confidence_interval
    assert [low, high] == pytest.approx([ref.low, ref.high])


def test_ood_detection_auroc_interval_and_p_value():
    """AUROC against scikit-learn; p-value against an exact enumeration of the group labels."""
    from itertools import combinations

    from SegUncertaintyLib.evaluation.cohort_stats import ood_detection

    ood, ind = np.array([0.9, 0.7, 0.75]), np.array([0.1, 0.2, 0.72, 0.3, 0.15, 0.2])
    out = ood_detection(ood, ind)
    y = np.r_[np.ones(3, bool), np.zeros(6, bool)]
    values = np.r_[ood, ind]
    assert out["auroc"] == pytest.approx(roc_auc_score(y, values))
    null = [roc_auc_score(np.isin(np.arange(9), c), values) for c in combinations(range(9), 3)]
    greater = np.mean(np.array(null) >= out["auroc"] - 1e-12)
    less = np.mean(np.array(null) <= out["auroc"] + 1e-12)
    assert out["auroc_p"] == pytest.approx(min(1.0, 2 * min(greater, less)))
    low, high = out["auroc_ci95"]
    assert low <= out["auroc"] <= high <= 1
    assert math.isnan(ood_detection(ood, np.array([]))["auroc"])


def test_ood_detection_with_a_single_ood_case_enumerates_its_placements():
    """One OOD case: scipy's permutation_test needs two per group, so the n + 1 placements are enumerated;
    the most uncertain of 4 cases being the OOD one has P = 1/4 by chance, two-sided p = 1/2."""
    from SegUncertaintyLib.evaluation.cohort_stats import ood_detection

    out = ood_detection(np.array([0.9]), np.array([0.1, 0.2, 0.3]))
    assert out["auroc"] == 1.0 and out["auroc_p"] == pytest.approx(0.5)
    assert math.isnan(out["auroc_ci95"][0])
