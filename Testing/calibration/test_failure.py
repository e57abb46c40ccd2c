"""AURC, E-AURC and failure AUROC against hand-computed values, every ordering, and scikit-learn."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from SegUncertaintyLib.calibration.failure import aurc, e_aurc, failure_auroc, failure_detection, oracle_aurc
from SegUncertaintyLib.core.errors import UsageError


def test_aurc_by_hand():
    risk, u = np.array([0.1, 0.5, 0.2]), np.array([0.3, 0.9, 0.1])
    # accepted in order of u: risks 0.2, 0.1, 0.5 -> selective risks 0.2, 0.15, 0.8/3
    assert aurc(u, risk) == pytest.approx((0.2 + 0.15 + 0.8 / 3) / 3)
    assert oracle_aurc(risk) == pytest.approx((0.1 + 0.15 + 0.8 / 3) / 3)
    assert e_aurc(u, risk) == pytest.approx(0.1 / 3)
    assert e_aurc(risk * 7 + 1, risk) == pytest.approx(0.0)  # any increasing function of the risk is perfect


def test_ties_are_every_order_with_equal_weight():
    rng = np.random.default_rng(0)
    risk = rng.random(6)
    u = np.array([0.2, 0.2, 0.5, 0.5, 0.5, 0.9])
    orders = []
    for a in itertools.permutations([0, 1]):
        for b in itertools.permutations([2, 3, 4]):
            r = risk[list(a) + list(b) + [5]]
            orders.append(np.mean(np.cumsum(r) / np.arange(1, 7)))
    assert aurc(u, risk) == pytest.approx(np.mean(orders))
    assert aurc(np.zeros(6), risk) == pytest.approx(risk.mean())  # no information: the random AURC


def test_failure_auroc_matches_sklearn():
    rng = np.random.default_rng(1)
    dice = rng.uniform(0.5, 1.0, 80)
    u = np.round(1 - dice + rng.normal(0, 0.1, 80), 1)  # rounded: many ties
    assert failure_auroc(u, dice, 0.8) == pytest.approx(roc_auc_score(dice < 0.8, u))
    assert math.isnan(failure_auroc(u, np.ones(80), 0.8))
    out = failure_detection(u, dice, 0.8)
    assert out["oracle_aurc"] <= out["aurc"] <= out["random_aurc"] and out["failures"] == int((dice < 0.8).sum())
    with pytest.raises(UsageError):
        aurc(np.array([np.nan, 1.0]), np.array([0.1, 0.2]))
