"""Applying a calibration file (calibration/store.py) to one run's scores: the referral entry and the
predicted Dice per class of scores.json.

The predicted Dice comes from the CV+ predictor refitted on the calibration's stored training data (same
features, folds and seed: the same predictor as at calibration). The referral entry gives the threshold
and its guarantee, with the workload on this case: flagged mL and flagged % of the predicted segment.

Outside the calibration data, rule used: a class is outside when one of its subject scores (SUBJECT_SCORES,
where defined) lies outside the [min, max] the calibration cases reached for that class and score, or when
its prediction is empty and no calibration case's was. Such a class reads OUTSIDE; the guarantee and the
interval, which assume a case exchangeable with the calibration cases, are still written but do not apply.

Usual ranges (issue 21, 1e): the calibration cases' ranges replace the model card's for this model, method
and sample count (:func:`calibration_reference`): a score reads "review recommended" beyond the most
uncertain value the calibration cases reached for its class (above the largest; below the smallest for a
score where lower = more uncertain, dpw). scores.json's ``usual_ranges`` holds the bounds used and where
they come from (``"from": "calibration"``; ``"model card"`` or ``"none"`` otherwise).
"""

from __future__ import annotations

import numpy as np

from .predicted_dice import fit_dice_predictor
from .store import threshold_from_json

OUTSIDE = "outside the calibration data: the guarantee does not apply"
RULE = ("outside when a subject score lies outside the [min, max] of the calibration cases for its class, or the "
        "prediction is empty and no calibration case's was")
NOT_CALIBRATED = ("not calibrated: run 'seguncertainty calibrate MODEL --images ... --labels ...' with this "
                  "method and sample count for a referral threshold with a guarantee and a predicted Dice")


def outside_calibration(block: dict, scores: dict) -> list[str]:
    """The scores of one class (scores.json's values) outside the calibration class ``block``'s data."""
    outside = [s for s, (lo, hi) in block["usual_ranges"].items()
               if scores.get(s) is not None and not lo <= scores[s] <= hi]
    if scores.get("empty_prediction") and not any(block["predicted_dice"]["training"]["empty"]):
        outside.append("empty_prediction")
    return outside


def calibration_reference(doc: dict, lower_is_uncertain: frozenset[str]) -> dict:
    """The calibration's usual ranges in the model card's ``score_reference`` form (one bound per class and
    score, on its uncertain side), with ``from``, ``source``, ``method`` and ``n_samples``."""
    return {"from": "calibration", "method": doc["method"], "n_samples": doc["n_samples"],
            "source": (f"calibration {doc['id']}: the range the {doc['n']} calibration cases reached (review beyond "
                       "their most uncertain value); replaces the model card's ranges for this method and sample "
                       "count"),
            "classes": {name: {s: {"review_below": lo} if s in lower_is_uncertain else {"review_above": hi}
                               for s, (lo, hi) in block["usual_ranges"].items()}
                        for name, block in doc["classes"].items()}}


def predicted_dice(block: dict, scores: dict, alpha: float) -> dict:
    """{"value", "interval": [lo, hi], "coverage"} for one class from its subject scores."""
    training = block["predicted_dice"]
    features = training["features"][:-1]  # the subject scores; the last feature is the empty flag
    x = np.array(training["training"]["scores"], dtype=np.float64)
    predictor = fit_dice_predictor(x, np.array(training["training"]["empty"]),
                                   np.array(training["training"]["dice"]), alpha)
    row = np.array([[np.nan if scores.get(s) is None else scores[s] for s in features]], dtype=np.float64)
    value, interval = predictor.predict(row, np.array([bool(scores.get("empty_prediction"))]))
    return {"value": float(value[0]), "interval": [float(interval[0, 0]), float(interval[0, 1])],
            "coverage": training["coverage"], "method": training.get("method", "")}


def flagged_mask(values: np.ndarray, referral: dict) -> np.ndarray:
    """The voxels flagged for review: ``values`` (the referral map, any shape) at or above the threshold of
    ``referral`` (scores.json's or the calibration's entry; "+inf" flags nothing, "-inf" everything)."""
    return values >= threshold_from_json(referral["threshold"])


def calibrated_scores(doc: dict, scores: dict, flagged_voxels: int | None, segment_voxels: int,
                      voxel_ml: float, record: dict, usual_ranges: tuple[dict, dict] | None = None) -> dict:
    """``scores`` (scores.json's document) with the calibration ``doc`` applied: top-level ``referral`` and
    ``calibration`` (``record``: id, sha256, file), per class ``predicted_dice`` and, outside the calibration
    data, an ``outside_calibration`` reading. ``flagged_voxels``: voxels of the map at or above the
    threshold (None when the run wrote no such map); ``segment_voxels``: foreground voxels of the labelmap.
    ``usual_ranges``: (:func:`calibration_reference`, the class readings against it), which replace the
    card's readings and are recorded as ``usual_ranges``."""
    readings = usual_ranges[1] if usual_ranges else scores.get("readings", {})
    out = {**scores, "classes": {k: dict(v) for k, v in scores["classes"].items()},
           "readings": {k: dict(v) for k, v in readings.items()}}
    if usual_ranges:
        reference = usual_ranges[0]
        out.update(usual_ranges=reference, reference_source=reference["source"],
                   reference_measured_with=f"{reference['method']}, {reference['n_samples']} samples")
    outside_any = []
    for name, values in out["classes"].items():
        block = doc["classes"].get(name)
        if block is None:
            continue
        values["predicted_dice"] = predicted_dice(block, values, doc["alpha"])
        outside = outside_calibration(block, values)
        if outside:
            outside_any.append(name)
            values["predicted_dice"]["outside_calibration"] = outside
            out["readings"].setdefault(name, {})["calibration"] = {"reading": OUTSIDE, "usual_range": RULE}
    threshold = threshold_from_json(doc["referral"]["threshold"])
    flagged_ml = None if flagged_voxels is None else flagged_voxels * voxel_ml
    out["referral"] = {
        "map": doc["map"], "threshold": doc["referral"]["threshold"], "alpha": doc["alpha"],
        "n_calibration": doc["n"], "guarantee": doc["referral"]["guarantee"], "flagged_ml": flagged_ml,
        "flagged_percent_of_segment": (None if flagged_voxels is None or segment_voxels == 0
                                       else 100.0 * flagged_voxels / segment_voxels),
        "flagged": f"voxels with {doc['map']} >= {threshold:g}",
        "outside_calibration": outside_any, "outside_rule": RULE,
        **({"reading": OUTSIDE} if outside_any else {}),
    }
    out["calibration"] = record
    return out
