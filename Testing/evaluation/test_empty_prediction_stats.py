"""evaluate keeps empty predictions in its score statistics as the most uncertain cases (the stated convention)."""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from SegUncertaintyLib.evaluation.cohort_stats import score_quality_correlation
from SegUncertaintyLib.evaluation.decisions import empty_as_most_uncertain, empty_prediction
from SegUncertaintyLib.inference.scores import SCORE_CONVENTIONS


def test_empty_prediction_takes_the_most_uncertain_value_reached():
    rows = [{"cv": 0.1, "dpw": 0.9}, {"cv": 0.3, "dpw": 0.7},
            {"cv": None, "dpw": 1.0, "empty_prediction": True}, {"cv": 0.2, "dpw": 0.8}]
    assert empty_as_most_uncertain(rows, "cv").tolist() == [0.1, 0.3, 0.3, 0.2]
    assert empty_as_most_uncertain(rows, "dpw").tolist() == [0.9, 0.7, 0.7, 0.8]  # lower = more uncertain
    others = [{"cv": 0.9, "dpw": 0.1}]
    assert empty_as_most_uncertain(rows, "cv", others)[2] == 0.9
    assert math.isnan(empty_as_most_uncertain([{"cv": None, "empty_prediction": True}], "cv")[0])
    assert "most uncertain" in SCORE_CONVENTIONS["empty_prediction"]


def test_empty_prediction_stays_in_the_correlation():
    """A missed structure (Dice 0) used to drop out (null cv) or read certain (dpw 1); now it counts, tied with
    the most uncertain case, so Spearman equals scipy's on that column."""
    rng = np.random.default_rng(0)
    dice = np.concatenate([rng.uniform(0.6, 0.95, 12), [0.0]])
    cv = 0.5 - 0.4 * dice[:12] + rng.normal(0, 0.02, 12)
    rows = [{"cv": float(c)} for c in cv] + [{"cv": None, "empty_prediction": True}]
    column = empty_as_most_uncertain(rows, "cv")
    result = score_quality_correlation(column, dice)
    assert result["n"] == 13
    assert result["spearman"] == pytest.approx(spearmanr(np.append(cv, cv.max()), dice).statistic)


def test_empty_flag_falls_back_to_the_delivered_volume():
    assert empty_prediction({"empty_prediction": False}, 0.0) is False
    assert empty_prediction({}, 0.0) is True and empty_prediction({}, 1.5) is False
    assert empty_prediction({"segmentation_volume_ml": 0.0}) is True
