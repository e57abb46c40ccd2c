"""evaluate's temperature columns: before the temperature is recovered exactly from a single pass's tempered
probabilities, and is not claimed for T > 1 passes."""

import math

import numpy as np
import pytest
from scipy.special import softmax

from SegUncertaintyLib.evaluation.calibration import BinStats
from SegUncertaintyLib.evaluation.temperature_fit import before_temperature_columns


def case(t, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (3, 6, 7, 8))
    label = rng.integers(0, 3, (6, 7, 8))
    box = np.zeros(label.shape, bool)
    box[1:5, 2:6, 1:7] = True
    return z, softmax(z / t, axis=0), label, box


def test_one_pass_before_the_temperature_is_the_untempered_run():
    z, after, label, box = case(2.5)
    manifest = {"n_samples": 1, "settings": {"calibration": {"id": "c", "temperature": 2.5}}}
    columns = before_temperature_columns(manifest, after, label, box)
    untempered = BinStats.top_label(softmax(z, axis=0), label, box)
    assert columns["temperature"] == 2.5
    assert columns["nll_toplabel_box_t1"] == pytest.approx(untempered.nll(), rel=1e-9)
    assert columns["ece_toplabel_box_t1"] == pytest.approx(untempered.ece(), abs=1e-12)
    tempered = BinStats.top_label(after, label, box)
    assert abs(tempered.nll() - untempered.nll()) > 0.05  # the columns differ from the run's own


def test_without_a_temperature_before_equals_after_and_several_passes_are_not_undone():
    z, after, label, box = case(1.0)
    columns = before_temperature_columns({"n_samples": 8, "settings": {}}, after, label, box)
    assert columns["temperature"] == 1.0
    assert columns["nll_toplabel_box_t1"] == BinStats.top_label(after, label, box).nll()
    several = {"n_samples": 8, "settings": {"calibration": {"temperature": 2.0}}}
    assert all(math.isnan(v) for k, v in before_temperature_columns(several, after, label, box).items()
               if k != "temperature")
