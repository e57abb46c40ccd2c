"""Uncertainty against error for one case: U-E overlap and correction benefit (paper 001), and the
simulated referral curve (paper 003).

Conventions (paper 001's public code): U = u > tau (strict), E = prediction != reference, U-E Dice
= Dice(U, E) and 1 when both are empty; thresholds {0.05, 0.10, ..., 0.95}; the correction sets U to
background. Referral (paper 003): the voxels are ranked by decreasing uncertainty and the top fraction
is corrected to the reference; Dice is computed for every fraction from one sort (cumulative error
counts), not one pass per threshold.
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
