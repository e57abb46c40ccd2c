"""Failure detection and calibrated decisions over evaluated cases (issue 21, section 3), per class.

Failure: AURC, E-AURC, oracle and random AURC and the failure AUROC (Dice < ``FAILURE_DICE``) of each
subject score, empty predictions as the most uncertain cases (the stated convention), and for calibrated runs
of the predicted Dice (calibration/failure.py). Calibrated runs: the realised missed-error fraction at the
run's threshold λ̂ (scores.json ``referral``: the fraction of the case's error voxels, prediction !=
reference over all classes, whose map value is below λ̂; the same value on every class row of a case)
against α, and how many predicted-Dice intervals hold the actual Dice against their nominal coverage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..calibration.failure import failure_detection
from ..calibration.risk_control import error_values, missed_error_fraction
from ..calibration.store import threshold_from_json
from ..core.errors import InputImageError
from ..inference.scores import SUBJECT_SCORES, uncertain_side
from .case_folder import read_array, read_json

FAILURE_DICE = 0.8  # a case fails below this Dice (failure AUROC), as calibrate's default --failure-dice


def calibrated_decisions(files: dict[str, Path], segmentation: np.ndarray, reference: np.ndarray | None) -> dict:
    """A calibrated run's realised missed-error fraction at its threshold (scores.json ``referral``) and α;
    None values for a run without a calibration, without the threshold's map, or with several annotators."""
    referral = read_json(files["scores"], "scores file").get("referral") if "scores" in files else None
    if referral is None or reference is None:
        return {"missed_error_fraction": None, "referral_alpha": None}
    try:
        threshold, alpha = threshold_from_json(referral["threshold"]), float(referral["alpha"])
        map_name = referral["map"]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise InputImageError(f"Scores file {files['scores']}: field 'referral' needs 'map', a numeric 'threshold' "
                              f"and 'alpha' ({type(exc).__name__}: {exc})") from exc
    if map_name not in files:
        return {"missed_error_fraction": None, "referral_alpha": None}
    errors = error_values(read_array(files[map_name])[0], segmentation, reference)
    return {"missed_error_fraction": missed_error_fraction(errors, threshold), "referral_alpha": alpha}


def failure_table(rows: list[dict], failure_dice: float = FAILURE_DICE) -> dict[str, dict | None]:
    """Per subject score (empty predictions as the most uncertain) and, when every row has one, the predicted
    Dice: calibration.failure.failure_detection against the rows' Dice; None for a score undefined on some
    non-empty case (one sample)."""
    dice = score_column(rows, "dice")
    if not np.isfinite(dice).all():
        return {s: None for s in SUBJECT_SCORES}
    columns = {s: uncertain_side(s, empty_as_most_uncertain(rows, s)) for s in SUBJECT_SCORES}
    predicted = score_column(rows, "predicted_dice")
    if np.isfinite(predicted).all():
        columns["predicted_dice"] = -predicted
    return {s: failure_detection(u, dice, failure_dice) if np.isfinite(u).all() else None
            for s, u in columns.items()}


def decision_summary(rows: list[dict]) -> dict:
    """The realised missed-error fraction (mean over the calibrated cases, with α) and the predicted-Dice
    intervals' coverage (how many hold the actual Dice, with the nominal coverage); {} without calibration."""
    out = {}
    missed = score_column(rows, "missed_error_fraction")
    if np.isfinite(missed).any():
        alphas = {r["referral_alpha"] for r in rows if r.get("referral_alpha") is not None}
        out["missed_error_fraction"] = {"mean": float(np.nanmean(missed)), "n": int(np.isfinite(missed).sum()),
                                        "alpha": alphas.pop() if len(alphas) == 1 else None}
    low, high = score_column(rows, "predicted_dice_low"), score_column(rows, "predicted_dice_high")
    known = np.isfinite(low) & np.isfinite(high)
    if known.any():
        dice = score_column(rows, "dice")[known]
        held = int(((low[known] <= dice) & (dice <= high[known])).sum())
        nominal = {r["predicted_dice_nominal_coverage"] for r in rows if r.get("predicted_dice_nominal_coverage")}
        out["predicted_dice_coverage"] = {"held": held, "n": int(known.sum()), "fraction": held / int(known.sum()),
                                          "nominal": nominal.pop() if len(nominal) == 1 else None}
    return out


def score_column(rows: list[dict], score: str) -> np.ndarray:
    """(n,) float: each row's ``score``, NaN where it is missing or None."""
    return np.array([np.nan if row.get(score) is None else row[score] for row in rows], dtype=float)


def empty_prediction(class_scores: dict, predicted_ml: float | None = None) -> bool:
    """A class's scores.json ``empty_prediction`` flag; for a scores.json without it, whether the delivered
    segmentation is empty (``predicted_ml`` = 0, else its ``segmentation_volume_ml`` = 0)."""
    if "empty_prediction" in class_scores:
        return bool(class_scores["empty_prediction"])
    volume = predicted_ml if predicted_ml is not None else class_scores.get("segmentation_volume_ml")
    return volume == 0


def empty_as_most_uncertain(rows: list[dict], score: str, others: list[dict] = ()) -> np.ndarray:
    """``score`` of each row, where an empty prediction (``empty_prediction``) takes the most uncertain value
    the non-empty rows of ``rows`` and ``others`` reach (the maximum; the minimum for dpw): the stated
    convention (scores.SCORE_CONVENTIONS["empty_prediction"]) that keeps missed structures in the statistics,
    ranked at least as uncertain as every other case. NaN when no non-empty row defines the score."""
    values = score_column(rows, score)
    reached = uncertain_side(score, np.concatenate([
        score_column([r for r in group if not r.get("empty_prediction")], score) for group in (rows, others)]))
    reached = reached[np.isfinite(reached)]
    worst = float(uncertain_side(score, [reached.max()])[0]) if reached.size else np.nan
    empty = np.array([bool(r.get("empty_prediction")) for r in rows], dtype=bool)
    return np.where(empty, worst, values)
