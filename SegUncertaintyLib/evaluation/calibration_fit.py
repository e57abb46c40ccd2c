"""Fit a calibration from labelled case folders (``segment`` outputs and reference labelmaps): the referral
threshold by conformal risk control with its workload, the predicted Dice per class with CV+ intervals, and
failure detection per score. The mathematics is in SegUncertaintyLib/calibration/; this module reads the
cases (as evaluate reads them, grids checked) and assembles a JSON-ready result. The temperature needs every
pass's logits, which case folders do not keep: evaluation/temperature_fit.py collects and fits them.

Per case, on the case's labelmap: E = {prediction != reference} (any class), the uncertainty map's values
at E (calibration.risk_control.error_values), Dice per foreground class, and the scores.json subject scores
with the empty-prediction flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calibration.failure import failure_detection
from ..calibration.predicted_dice import METHOD, fit_dice_predictor
from ..calibration.risk_control import conformal_risk_threshold, error_values, missed_error_fraction
from ..core.errors import InputImageError, UsageError
from ..inference.scores import SUBJECT_SCORES, uncertain_side
from .case_folder import case_manifest, check_case_grids, file_key, read_annotations, read_array, score_classes
from .decisions import empty_prediction
from .referral import dice

MIN_CASES, FEW_CASES = 10, 30


@dataclass
class LabelledCase:
    """One calibration case: ``errors`` sorted map values at the error voxels; per class name: ``dice``,
    ``scores`` (SUBJECT_SCORES, None where undefined), ``empty``; and for the referral workload the map,
    prediction and reference (z, y, x) with the voxel volume in mL; ``classes`` label value -> name."""

    case: str
    errors: np.ndarray
    dice: dict[str, float]
    scores: dict[str, dict]
    empty: dict[str, bool]
    uncertainty: np.ndarray
    prediction: np.ndarray
    reference: np.ndarray
    voxel_ml: float
    classes: dict[int, str]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (z, y, x) mm of the case's grid


def read_labelled_case(case_dir: Path, reference_path: Path, map_name: str = "entropy",
                       labels: dict[int, str] | None = None) -> LabelledCase:
    """A case folder and its reference; InputImageError when the map is missing or a grid differs.
    ``labels`` names the label values of plain folders without manifest.json (as evaluate's --labels)."""
    manifest = case_manifest(case_dir, labels)
    files = {file_key(e): case_dir / e["file"] for e in manifest["outputs"]}
    if map_name not in files:
        raise InputImageError(f"Case '{case_dir.name}' has no {map_name} map (run segment with --maps {map_name})")
    prediction, seg_image = read_array(files["labelmap"])
    annotations, ref_image = read_annotations(reference_path)
    if len(annotations) != 1:
        raise InputImageError(f"Reference {reference_path}: calibration needs one labelmap, not a folder")
    check_case_grids(case_dir, files, seg_image, reference_path, ref_image, None)
    uncertainty, reference = read_array(files[map_name])[0], annotations[0]
    scores = score_classes(files["scores"]) if "scores" in files else {}
    classes = [(int(v), name) for v, name in manifest["labels"].items() if int(v) != 0]
    voxel_ml = math.prod(seg_image.GetSpacing()) / 1000
    return LabelledCase(
        case=case_dir.name, errors=error_values(uncertainty, prediction, reference),
        dice={name: dice(prediction == v, reference == v) for v, name in classes},
        scores={name: {s: scores.get(name, {}).get(s) for s in SUBJECT_SCORES} for _, name in classes},
        empty={name: empty_prediction(scores.get(name, {}), float((prediction == v).sum() * voxel_ml))
               for v, name in classes},
        uncertainty=uncertainty, prediction=prediction, reference=reference, voxel_ml=voxel_ml,
        classes=dict(classes), spacing=tuple(reversed(seg_image.GetSpacing())))


def referral_workload(case: LabelledCase, threshold: float) -> dict:
    """At ``threshold``: flagged mL, flagged % of the predicted segment (all foreground classes), the missed
    error fraction, and the Dice per class after the flagged voxels are corrected to the reference."""
    flagged = case.uncertainty >= threshold
    corrected = np.where(flagged, case.reference, case.prediction)
    segment = int((case.prediction != 0).sum())
    return {"flagged_ml": float(flagged.sum() * case.voxel_ml),
            "flagged_percent_of_segment": float(100 * flagged.sum() / segment) if segment else math.nan,
            "missed_error_fraction": missed_error_fraction(case.errors, threshold),
            "dice_after_correction": {name: dice(corrected == v, case.reference == v)
                                      for v, name in case.classes.items()}}


def _score_matrix(cases: list[LabelledCase], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.array([[np.nan if c.scores[name][s] is None else c.scores[name][s] for s in SUBJECT_SCORES]
                  for c in cases], dtype=np.float64)
    return x, np.array([c.empty[name] for c in cases]), np.array([c.dice[name] for c in cases])


def out_of_fold_dice(x: np.ndarray, empty: np.ndarray, dice_values: np.ndarray, alpha: float, folds: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each case's predicted Dice (n,) and its interval (n, 2) from a predictor fitted without its fold
    (cross-fitting), for failure detection and the report's predicted-vs-actual figure on held-out cases."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(x)) % min(folds, len(x))
    out, interval = np.empty(len(x)), np.empty((len(x), 2))
    for f in np.unique(fold):
        held = fold == f
        predictor = fit_dice_predictor(x[~held], empty[~held], dice_values[~held], alpha, folds, seed)
        out[held], interval[held] = predictor.predict(x[held], empty[held])
    return out, interval


def detection_score(score: str, values: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """A subject score's values oriented higher = more uncertain, with the empty-prediction convention: an
    empty (or undefined) value takes the most uncertain value the non-empty cases reach (0 if none)."""
    column = uncertain_side(score, values)
    worst = np.nanmax(column[~empty]) if np.isfinite(column[~empty]).any() else 0.0
    return np.where(empty | ~np.isfinite(column), worst, column)


def referral_curve(errors: list[np.ndarray], points: int = 200) -> dict:
    """Mean missed-error fraction over the cases at up to ``points`` thresholds (quantiles of the pooled
    error values, exact values of the step function there): {"threshold": [...], "mean_missed_error_fraction":
    [...]}, for the report's referral figure."""
    pooled = np.concatenate([e for e in errors if e.size] or [np.zeros(0)])
    if pooled.size == 0:
        return {"threshold": [], "mean_missed_error_fraction": []}
    grid = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, points), method="inverted_cdf"))
    mean = [float(np.mean([missed_error_fraction(e, t) for e in errors])) for t in grid]
    return {"threshold": grid.tolist(), "mean_missed_error_fraction": mean}


def fit_calibration(cases: list[LabelledCase], alpha: float = 0.1, map_name: str = "entropy",
                    failure_dice: float = 0.8, folds: int = 10, seed: int = 0) -> dict:
    """The JSON-ready calibration of n >= MIN_CASES cases (UsageError below; a note below FEW_CASES)."""
    n = len(cases)
    if n < MIN_CASES:
        raise UsageError(f"calibration needs at least {MIN_CASES} labelled cases, got {n}")
    odd = [c.case for c in cases if c.classes != cases[0].classes]
    if odd:
        raise UsageError(f"case(s) {', '.join(odd[:5])} have other classes than {cases[0].case}: "
                         f"{sorted(cases[0].classes.items())}")
    notes = []
    if n < FEW_CASES:
        notes.append(f"only {n} calibration cases: the conformal corrections cost 1/(n+1) = {1 / (n + 1):.3f} of "
                     f"alpha; {FEW_CASES} or more are advised")
    control = conformal_risk_threshold([c.errors for c in cases], alpha)
    workloads = [referral_workload(c, control.threshold) for c in cases]
    referral = {"map": map_name, "threshold": control.threshold, "alpha": alpha, "n_calibration": n,
                "guarantee": control.guarantee, "mean_missed_error_fraction": control.mean_loss,
                "bound": control.bound,
                "workload_mean": {"flagged_ml": float(np.mean([w["flagged_ml"] for w in workloads])),
                                  "flagged_percent_of_segment": float(np.nanmean(
                                      [w["flagged_percent_of_segment"] for w in workloads]))},
                "per_case": {c.case: w for c, w in zip(cases, workloads, strict=True)},
                "curve": referral_curve([c.errors for c in cases])}
    classes = {}
    for name in cases[0].dice:
        x, empty, dice_values = _score_matrix(cases, name)
        predicted, predicted_interval = out_of_fold_dice(x, empty, dice_values, alpha, folds, seed)
        detection = {score: failure_detection(detection_score(score, x[:, j], empty), dice_values, failure_dice)
                     for j, score in enumerate(SUBJECT_SCORES)}
        detection["predicted_dice"] = failure_detection(-predicted, dice_values, failure_dice)
        classes[name] = {
            "predicted_dice": {"method": METHOD, "coverage": 1 - alpha, "features": [*SUBJECT_SCORES, "empty"],
                               "training": {"scores": np.where(np.isnan(x), None, x).tolist(),
                                            "empty": empty.tolist(), "dice": dice_values.tolist()},
                               "out_of_fold": dict(zip([c.case for c in cases], predicted.tolist(), strict=True)),
                               "out_of_fold_interval": predicted_interval.tolist()},
            "failure_detection": detection,
            "usual_ranges": {s: [float(np.nanmin(x[:, j])), float(np.nanmax(x[:, j]))]
                             for j, s in enumerate(SUBJECT_SCORES) if np.isfinite(x[:, j]).any()},
        }
    return {"n": n, "alpha": alpha, "failure_dice": failure_dice, "cases": [c.case for c in cases],
            "referral": referral, "classes": classes, "notes": notes}
