"""Cohort measurements against scipy/scikit-learn and hand-built cases."""

import math

import numpy as np
import pytest
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
    assert -1.0 < out["pearson_logit"] < -0.8 and out["pearson_p"] < 1e-6
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
    assert generalized_energy_distance(samples, samples[:1])["sample_diversity"] == pytest.approx(expected)
