"""Temperature scaling recovers a known scale; the top-label ECE agrees with netcal's."""

import numpy as np
import pytest
from scipy.special import softmax

from SegUncertaintyLib.calibration.temperature import fit_temperature, mean_probability, nll
from SegUncertaintyLib.core.errors import UsageError
from SegUncertaintyLib.evaluation.calibration import BinStats


def draw(rng, n=40000, c=3):
    """Logits z (C, N) and labels drawn from softmax(z): z is calibrated by construction."""
    z = rng.normal(0.0, 2.0, (c, n))
    p = softmax(z, axis=0)
    labels = (rng.random(n)[None] > np.cumsum(p, axis=0)).sum(0)
    return z, labels


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.5, 6.0])
def test_recovers_a_known_scale(scale):
    z, labels = draw(np.random.default_rng(int(scale * 10)))
    t = fit_temperature(scale * z, labels)
    assert t == pytest.approx(scale, rel=0.02)
    assert nll(scale * z, labels, t) <= nll(scale * z, labels, 1.0) + 1e-12


def test_mean_over_samples_after_the_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (4, 3, 50))
    expected = softmax(z / 2.0, axis=1).mean(0)
    assert np.allclose(mean_probability(z, 2.0), expected)
    labels = rng.integers(0, 3, 50)
    assert nll(z, labels, 2.0) == pytest.approx(-np.log(expected[labels, np.arange(50)]).mean())
    same = np.repeat(2.0 * z[:1], 5, axis=0)  # identical samples: the one-sample answer
    assert fit_temperature(same, labels) == pytest.approx(fit_temperature(2.0 * z[0], labels), rel=1e-4)
    with pytest.raises(UsageError):
        nll(z, np.full(50, 3))
    with pytest.raises(UsageError):
        fit_temperature(z[0, 0], labels)


def test_top_label_ece_matches_netcal_before_and_after_the_temperature():
    from netcal.metrics import ECE

    z, labels = draw(np.random.default_rng(5), n=20000)
    for t in (1.0, fit_temperature(3.0 * z, labels)):
        p = mean_probability(3.0 * z, t)
        ours = BinStats.top_label(p, labels).ece()
        theirs = ECE(bins=10).measure(p.T, labels)
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert BinStats.top_label(mean_probability(3.0 * z, t), labels).ece() < 0.5 * BinStats.top_label(
        mean_probability(3.0 * z, 1.0), labels).ece()
