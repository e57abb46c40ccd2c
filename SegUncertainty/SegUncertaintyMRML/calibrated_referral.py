"""A calibrated run's referral threshold in the panel: where to set the slider, and what the guarantee says
at the threshold the reader chose.

The calibration (``seguncertainty calibrate``, calibration/risk_control.py) flags the voxels with
``map >= lambda_hat`` and guarantees, for a new case exchangeable with the calibration cases, that the expected
fraction of its segmentation errors outside the flagged voxels is at most alpha (marginal over cases). The
panel flags ``map > t`` on the float32 map (flagged_voxels.Referral). Hence:

- :func:`slider_threshold` is the t with ``{map > t} == {map >= lambda_hat}`` for every float32 map value;
- at any t whose flagged set contains ``{map >= lambda_hat}`` (t at or below that value) the guarantee still
  holds, since the missed-error fraction can only fall when more voxels are flagged; above it, it no longer
  holds (:func:`guarantee_holds`);
- it is a statement about the calibration's map only, and does not apply to a case outside the calibration
  data (scores.json's ``referral`` then names the classes in ``outside_calibration`` and says so in ``reading``).
"""

from __future__ import annotations

import math

import numpy as np

from SegUncertaintyLib.calibration.store import threshold_from_json

NOT_CALIBRATED = ("Not calibrated: no referral guarantee. 'seguncertainty calibrate MODEL --images ... --labels ...' "
                  "with this method and sample count gives one, and a predicted Dice.")


def calibrated_threshold(referral: dict) -> float:
    """lambda_hat of scores.json's ``referral`` (+inf: flag nothing, -inf: flag every voxel)."""
    return threshold_from_json(referral["threshold"])


def _smallest_flagged(lambda_hat: float) -> np.float32:
    """The smallest float32 value >= lambda_hat (the least map value the calibration flags)."""
    value = np.float32(lambda_hat)
    return value if float(value) >= lambda_hat else np.nextafter(value, np.float32(np.inf))


def slider_threshold(referral: dict, map_maximum: float) -> float:
    """The slider's t with ``{map > t}`` equal to the calibration's ``{map >= lambda_hat}`` on a float32 map whose
    largest value is ``map_maximum``; never below 0, the slider's minimum (lambda_hat <= 0 or -inf asks to flag
    every voxel, zeros included, which no t >= 0 does: the guarantee then does not hold, guarantee_holds).
    +inf (flag nothing) gives ``map_maximum``."""
    lambda_hat = calibrated_threshold(referral)
    if lambda_hat == math.inf:
        return float(max(map_maximum, 0.0))
    if lambda_hat <= 0.0:
        return 0.0
    return float(np.nextafter(_smallest_flagged(lambda_hat), np.float32(-np.inf)))


def guarantee_holds(referral: dict, threshold: float) -> bool:
    """Whether ``{map > threshold}`` (float32, as the panel flags) contains ``{map >= lambda_hat}`` for every
    map value: then the calibration's guarantee holds at ``threshold`` (module doc). Never for lambda_hat =
    -inf, where the calibration met alpha at no threshold."""
    lambda_hat = calibrated_threshold(referral)
    if lambda_hat == math.inf:
        return True
    if lambda_hat == -math.inf:
        return False
    return bool(np.float32(threshold) < _smallest_flagged(lambda_hat))


def guarantee_text(referral: dict | None, map_name: str, threshold: float, map_maximum: float) -> str:
    """The panel's one paragraph about the guarantee at ``threshold`` on the map ``map_name`` (largest value
    ``map_maximum``); for an uncalibrated run, how to calibrate."""
    if referral is None:
        return NOT_CALIBRATED
    lambda_hat = calibrated_threshold(referral)
    calibrated = (f"calibrated threshold {referral['map']} >= {lambda_hat:.6g} (alpha {referral['alpha']:g}, "
                  f"{referral['n_calibration']} calibration cases)")
    if lambda_hat == -math.inf:
        text = (f"The calibration met alpha {referral['alpha']:g} at no threshold with "
                f"{referral['n_calibration']} cases: no guarantee holds.")
    elif map_name != referral["map"]:
        text = (f"The {calibrated} is for the {referral['map']} map: no guarantee holds on "
                f"{map_name.replace('_', ' ')}; show {referral['map']} to use it.")
    elif not guarantee_holds(referral, threshold):
        text = (f"Above the {calibrated}: the guarantee no longer holds at this threshold; set it back to "
                "restore it.")
    elif np.float32(threshold) == np.float32(slider_threshold(referral, map_maximum)):
        text = f"At the {calibrated}: {referral['guarantee']}"
    else:
        text = (f"Below the {calibrated}: the guarantee still holds, with more voxels to review (every voxel "
                f"the calibrated threshold flags is flagged). {referral['guarantee']}")
    if referral.get("outside_calibration") and referral.get("reading"):  # scores.json's own words
        text += f" This case: {referral['reading']}."
    return text
