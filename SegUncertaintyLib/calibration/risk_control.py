"""The referral threshold by conformal risk control (Angelopoulos, Bates, Fisch, Lei and Schuster,
Conformal Risk Control, ICLR 2024; arXiv 2022).

For case i with uncertainty map u_i, prediction and reference, the error voxels are
E_i = {v : prediction(v) != reference(v)} and the flagged voxels at threshold lambda are
F_i(lambda) = {v : u_i(v) >= lambda}. The loss is the fraction of the case's errors left unflagged,

    L_i(lambda) = |E_i \\ F_i(lambda)| / |E_i|        (0 when E_i is empty),

non-decreasing in lambda and bounded by B = 1. The threshold is

    lambda_hat = the largest lambda with  n / (n + 1) * mean_i L_i(lambda) + 1 / (n + 1) <= alpha.

Guarantee (Theorem 1 of the paper): for a new case exchangeable with the n calibration cases,
E[L_{n+1}(lambda_hat)] <= alpha: the expected fraction of its segmentation errors outside the flagged
voxels is at most alpha. The expectation is over the calibration cases and the new case together
(marginal over cases), not per case. When the losses have no large jumps, the same paper's Theorem 2 gives
E[L_{n+1}(lambda_hat)] >= alpha - 2 / (n + 1): the threshold is not needlessly conservative.

Exact computation: L_i is a step function, constant on each interval (s, s'] between consecutive error
values (L_i(lambda) = #{e in E_i : u_i(e) < lambda} / |E_i|), so the largest feasible lambda is one of the
error values, or +inf (flag nothing) when even missing every error meets the bound (few cases have errors),
or -inf (flag every voxel) when nothing does: 1 / (n + 1) > alpha, i.e. n < 1 / alpha - 1.

MAPIE 1.6 has conformal risk control for this recall-type loss (MultiLabelClassificationController and
SemanticSegmentationController, method "crc"), but on a fixed grid of thresholds over probabilities in
[0, 1] with sets {score > lambda}, and it refuses a case without errors (MAPIE's "every observation needs a
label"), where this loss is 0. So the threshold is computed here by hand, exactly; the tests check it
against a brute-force search and against MAPIE's CRC bound (``get_r_hat_plus``) on a grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import UsageError

GUARANTEE = ("For a new case exchangeable with the calibration cases, the expected fraction of its segmentation "
             "errors (voxels where the prediction differs from the reference) that lie outside the flagged voxels "
             "(uncertainty >= threshold) is at most alpha. This is marginal over cases, not per case.")


@dataclass(frozen=True)
class RiskControl:
    """A fitted referral threshold: ``threshold`` (lambda_hat; +inf flags nothing, -inf everything), the
    target ``alpha``, ``n`` calibration cases, their mean loss at the threshold and the bound
    n/(n+1) * mean + 1/(n+1) (<= alpha unless the threshold is -inf)."""

    threshold: float
    alpha: float
    n: int
    mean_loss: float
    bound: float
    guarantee: str = GUARANTEE


def error_values(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The uncertainty at the case's error voxels (prediction != reference), sorted ascending (float64)."""
    uncertainty, prediction, reference = map(np.asarray, (uncertainty, prediction, reference))
    if not uncertainty.shape == prediction.shape == reference.shape:
        raise UsageError(f"uncertainty {uncertainty.shape}, prediction {prediction.shape} and reference "
                         f"{reference.shape} differ in shape")
    return np.sort(uncertainty[prediction != reference].astype(np.float64))


def missed_error_fraction(errors: np.ndarray, threshold: float) -> float:
    """L_i(threshold) of one case from its sorted ``errors`` (:func:`error_values`): the fraction with
    uncertainty below the threshold; 0 for a case without errors."""
    return float(np.searchsorted(errors, threshold, side="left") / errors.size) if errors.size else 0.0


def conformal_risk_threshold(errors: Sequence[np.ndarray], alpha: float) -> RiskControl:
    """lambda_hat from the n calibration cases' sorted error values (:func:`error_values`), exactly.

    The mean loss at lambda = v is (1/n) sum over all error values w < v of 1/|E_i(w)|; it is evaluated at
    every distinct error value in one pass over the merged, sorted values.
    """
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha must lie in (0, 1), got {alpha}")
    n = len(errors)
    if n == 0:
        raise UsageError("conformal risk control needs at least one calibration case")
    values = np.concatenate([np.asarray(e, dtype=np.float64) for e in errors])
    if values.size and not np.isfinite(values).all():
        raise UsageError("uncertainty values must be finite")
    weights = np.concatenate([np.full(len(e), 1.0 / max(len(e), 1)) for e in errors])
    if values.size == 0:  # no case has an error: flagging nothing misses nothing
        return RiskControl(math.inf, alpha, n, 0.0, 1.0 / (n + 1))
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    below = np.concatenate([[0.0], np.cumsum(weights)])  # below[k] = sum of the weights of values[:k]
    first = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))  # first index of each distinct
    mean_loss = below[first] / n  # mean_i L_i(v) at each distinct value v
    bound = n / (n + 1) * mean_loss + 1.0 / (n + 1)
    above_all = below[-1] / n  # beyond every error value: L_i = 1 for each case with errors
    if n / (n + 1) * above_all + 1.0 / (n + 1) <= alpha:
        return RiskControl(math.inf, alpha, n, float(above_all), float(n / (n + 1) * above_all + 1.0 / (n + 1)))
    feasible = np.flatnonzero(bound <= alpha)  # a prefix: the bound is non-decreasing in lambda
    if feasible.size == 0:
        return RiskControl(-math.inf, alpha, n, 0.0, 1.0 / (n + 1))
    k = feasible[-1]
    return RiskControl(float(values[first[k]]), alpha, n, float(mean_loss[k]), float(bound[k]))
