"""U-E overlap, correction benefit and referral curves against hand-built cases and naive loops."""

import numpy as np
import pytest

from SegUncertaintyLib.evaluation.referral import (
    THRESHOLDS,
    correction_benefit,
    correction_benefit_curve,
    dice,
    referral_curve,
    ue_dice_curve,
)


def random_case(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    ref = rng.random(n) < 0.3
    pred = ref ^ (rng.random(n) < 0.1)
    u = np.clip(0.5 * (pred != ref) + 0.5 * rng.random(n), 0, 1)  # errors more uncertain
    u[rng.random(n) < 0.2] = 0.25  # ties
    return u, pred, ref


def test_ue_dice_on_a_known_confusion():
    pred = np.array([1, 1, 0, 0, 1, 0], bool)
    ref = np.array([1, 0, 1, 0, 1, 0], bool)  # errors at 1 and 2
    u = np.array([0.0, 0.9, 0.3, 0.6, 0.1, 0.0])
    curve = ue_dice_curve(u, pred, ref, np.array([0.05, 0.2, 0.5, 0.95]))
    # tau 0.05: U = {1,2,3,4}: 2*2/(4+2); 0.2: {1,2,3}: 4/5; 0.5: {1,3}: 2/4; 0.95: {}: 0
    assert np.allclose(curve, [4 / 6, 4 / 5, 2 / 4, 0])
    assert ue_dice_curve(np.zeros(4), np.ones(4, bool), np.ones(4, bool), np.array([0.5]))[0] == 1.0


def test_ue_dice_curve_matches_a_loop_over_thresholds():
    u, pred, ref = random_case(0)
    naive = [dice(u > t, pred != ref) for t in THRESHOLDS]
    assert np.allclose(ue_dice_curve(u, pred, ref), naive)


@pytest.mark.parametrize("seed", range(6))
def test_bnf_analytic_condition_agrees_with_the_dice_change(seed):
    u, pred, ref = random_case(seed, n=500)
    for t in (0.3, 0.6, 0.9):
        result = correction_benefit(u, pred, ref, t)
        assert result["benefits"] == (result["dice_after"] > result["dice_before"])


@pytest.mark.parametrize("seed", range(3))
def test_bnf_curve_equals_the_correction_at_each_threshold(seed):
    u, pred, ref = random_case(seed, n=800)
    curve = correction_benefit_curve(u, pred, ref)
    for i, t in enumerate(THRESHOLDS):
        single = correction_benefit(u, pred, ref, t)
        assert curve["benefits"][i] == single["benefits"]
        assert curve["dice_after"][i] == pytest.approx(single["dice_after"])


def test_bnf_hand_built():
    pred = np.array([1, 1, 1, 1], bool)
    ref = np.array([1, 1, 0, 0], bool)
    u = np.array([0.0, 0.0, 0.8, 0.8])  # only the false positives are uncertain
    result = correction_benefit(u, pred, ref, 0.5)
    assert result["benefits"] and result["dice_before"] == pytest.approx(4 / 6) and result["dice_after"] == 1.0


def test_referral_curve_matches_correcting_voxels_one_fraction_at_a_time():
    u, pred, ref = random_case(1)
    fractions = np.linspace(0, 1, 21)
    curve = referral_curve(u, pred, ref, fractions)
    order = np.argsort(-u, kind="stable")
    for f, d in zip(fractions, curve["dice"], strict=True):
        corrected = pred.copy()
        top = order[: int(round(f * u.size))]
        corrected[top] = ref[top]
        assert d == pytest.approx(dice(corrected, ref))
    assert curve["dice"][-1] == 1.0 and curve["dice"][0] == pytest.approx(dice(pred, ref))
    # errors carry more uncertainty, so this curve beats random referral
    random_u = np.random.default_rng(9).random(u.size)
    assert curve["auc"] > referral_curve(random_u, pred, ref, fractions)["auc"]


def test_threshold_referral_matches_correcting_each_threshold_by_hand():
    """Sander et al. 2019's curve: for each tau, correct u > tau to the reference and recompute Dice."""
    from SegUncertaintyLib.evaluation.referral import dice, threshold_referral

    rng = np.random.default_rng(7)
    ref = rng.random((9, 10, 11)) < 0.3
    pred = ref ^ (rng.random(ref.shape) < 0.15)
    u = np.where(pred != ref, rng.uniform(0.2, 1, ref.shape), rng.uniform(0, 0.6, ref.shape)).round(2)  # ties
    thresholds = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.59, 0.6, 0.9, 1.0])
    out = threshold_referral(u, pred, ref, thresholds)
    for i, tau in enumerate(thresholds):
        flagged = u > tau
        corrected = np.where(flagged, ref, pred)
        assert out["dice"][i] == pytest.approx(dice(corrected, ref))
        assert out["fraction"][i] == pytest.approx(flagged.mean())
    assert out["dice"][-1] == pytest.approx(dice(pred, ref))  # nothing above 1
    assert np.all(np.diff(out["dice"]) <= 1e-12)  # a higher threshold refers fewer voxels
