"""Uncertainty against error for one case: U-E overlap and correction benefit (Jungo and Reyes, MICCAI
2019), and simulated referral curves (Sander et al., SPIE Medical Imaging 2019).

Conventions (Jungo and Reyes' public code): U = u > tau (strict), E = prediction != reference, U-E Dice
= Dice(U, E) and 1 when both are empty; thresholds {0.05, 0.10, ..., 0.95}; the correction sets U to
background. Referral, two forms:
- by threshold (Sander et al.'s figure 2): one uncertainty threshold for every case, the voxels with
  u > tau are corrected to the reference; a cohort curve plots mean Dice against the mean % of voxels
  referred (:func:`threshold_referral`);
- by fraction: in each case the same fraction of voxels, the most uncertain first, is corrected
  (:func:`referral_curve`).
Both are computed for every threshold or fraction from one sort (cumulative error counts).
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many ``values`` are > each threshold (strict), from one sort."""
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())
    return ordered.size - np.searchsorted(ordered, thresholds, side="right")


def ue_dice_curve(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                  thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Dice(u > tau, prediction != reference) for every tau, from one sort of u."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    error = (np.asarray(prediction).ravel() != np.asarray(reference).ravel())
    n_u, n_ue = count_above(u, thresholds), count_above(u[error], thresholds)
    total = n_u + error.sum()
    return np.where(total > 0, 2.0 * n_ue / np.maximum(total, 1), 1.0)


def correction_benefit(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                       threshold: float) -> dict:
    """Set u > threshold to background: the analytic BnF condition and the Dice before and after.

    With TPU / FPU the true / false positives that are uncertain, Dice improves exactly when
    FPU * TP > TPU * (TP + FP + FN).
    """
    pred, ref = np.asarray(prediction, bool), np.asarray(reference, bool)
    uncertain = np.asarray(uncertainty) > threshold
    tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
    tpu, fpu = (pred & ref & uncertain).sum(), (pred & ~ref & uncertain).sum()
    before, after = dice(pred, ref), dice(pred & ~uncertain, ref)
    return {"threshold": threshold, "benefits": bool(fpu * tp > tpu * (tp + fp + fn)),
            "dice_before": before, "dice_after": after, "tpu": int(tpu), "fpu": int(fpu)}


def correction_benefit_curve(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                             thresholds: np.ndarray = THRESHOLDS) -> dict[str, np.ndarray]:
    """:func:`correction_benefit` for every threshold at once, from the uncertain TP / FP counts:
    after the correction TP' = TP - TPU, FP' = FP - FPU, FN' = FN + TPU."""
    u = np.asarray(uncertainty, dtype=np.float64)
    pred, ref = np.asarray(prediction, bool), np.asarray(reference, bool)
    tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
    tpu, fpu = count_above(u[pred & ref], thresholds), count_above(u[pred & ~ref], thresholds)
    denom = 2 * tp + fp + fn - tpu - fpu
    dice_after = np.where(denom > 0, 2.0 * (tp - tpu) / np.maximum(denom, 1), 1.0)
    return {"benefits": fpu * tp > tpu * (tp + fp + fn), "dice_after": dice_after}


REFERRAL_THRESHOLDS = np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 120)])  # any map in 0-1 (variance too)


def threshold_referral(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                       thresholds: np.ndarray = REFERRAL_THRESHOLDS) -> dict[str, np.ndarray]:
    """Per threshold: the fraction (0-1) of all voxels with u > tau and the Dice after correcting them to
    the reference (FP flagged become TN, FN flagged become TP)."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    pred, ref = np.asarray(prediction, bool).ravel(), np.asarray(reference, bool).ravel()
    tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
    fp_flag, fn_flag = count_above(u[pred & ~ref], thresholds), count_above(u[~pred & ref], thresholds)
    tp_k, fp_k, fn_k = tp + fn_flag, fp - fp_flag, fn - fn_flag
    denom = 2 * tp_k + fp_k + fn_k
    return {"threshold": np.asarray(thresholds, dtype=np.float64),
            "fraction": count_above(u, thresholds) / max(u.size, 1),
            "dice": np.where(denom > 0, 2.0 * tp_k / np.maximum(denom, 1), 1.0)}


def referral_curve(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                   fractions: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """Dice after correcting the most uncertain ``fractions`` (0-1) of voxels to the reference.

    Ties in uncertainty are broken by voxel order (stable sort). Returns fractions, Dice and the area
    under the Dice-fraction curve (trapezoid, fractions 0-1 scaled to the range given).
    """
    fractions = np.linspace(0, 1, 101) if fractions is None else np.asarray(fractions, dtype=np.float64)
    pred = np.asarray(prediction, bool).ravel()
    ref = np.asarray(reference, bool).ravel()
    order = np.argsort(-np.asarray(uncertainty, dtype=np.float64).ravel(), kind="stable")
    fp_cum = np.concatenate([[0], np.cumsum((pred & ~ref)[order])])
    fn_cum = np.concatenate([[0], np.cumsum((~pred & ref)[order])])
    tp, fp, fn = (pred & ref).sum(), fp_cum[-1], fn_cum[-1]
    k = np.round(fractions * pred.size).astype(np.int64)
    tp_k, fp_k, fn_k = tp + fn_cum[k], fp - fp_cum[k], fn - fn_cum[k]
    denom = 2 * tp_k + fp_k + fn_k
    dices = np.where(denom > 0, 2.0 * tp_k / np.maximum(denom, 1), 1.0)
    area = float(np.trapezoid(dices, fractions)) if fractions.size > 1 else float(dices[0])
    return {"fraction": fractions, "dice": dices, "auc": area}
