"""Failure detection by a subject score: risk-coverage (AURC, E-AURC) and failure AUROC.

For n cases with risk r_i = 1 - Dice_i and an uncertainty score u_i oriented so that higher = more
uncertain (negate dpw, or a predicted Dice), cases are accepted from the least uncertain: the selective
risk at coverage k/n is the mean risk of the k least uncertain cases, and

    AURC = (1/n) sum_{k=1..n} (1/k) sum_{j<=k} r_(j)

(Geifman, Uziel and El-Yaniv, Bias-reduced uncertainty estimation for deep neural classifiers, ICLR 2019;
Jaeger et al., A call to reflect on evaluation practices for failure detection in image classification,
ICLR 2023). Cases tied in u are taken in every order with equal weight, which equals replacing their
risks by the tie group's mean risk. The oracle orders cases by their risk; E-AURC = AURC - AURC(oracle) >= 0;
a score that carries no information has expected AURC = mean risk.

Failure AUROC: failure = Dice < ``failure_dice``; the area under the ROC curve of u for detecting failures,
P(u_failure > u_success) + P(tie) / 2 (Mann-Whitney); NaN without both failures and successes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from ..core.errors import UsageError


def _checked(uncertainty: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, r = np.asarray(uncertainty, dtype=np.float64).ravel(), np.asarray(risk, dtype=np.float64).ravel()
    if u.shape != r.shape or u.size == 0:
        raise UsageError(f"need one uncertainty per risk, got {u.size} and {r.size}")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise UsageError("uncertainty and risk must be finite (apply the empty-prediction convention first)")
    return u, r


def risk_coverage(uncertainty: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve: coverage k/n (k = 1..n) and the selective risk there, the mean risk of the k
    least uncertain cases, ties in ``uncertainty`` averaged over their orders."""
    u, r = _checked(uncertainty, risk)
    groups, inverse = np.unique(u, return_inverse=True)  # ascending: least uncertain first
    group_mean = np.bincount(inverse, weights=r) / np.bincount(inverse)
    ordered = group_mean[inverse][np.argsort(u, kind="stable")]
    k = np.arange(1, u.size + 1)
    return k / u.size, np.cumsum(ordered) / k


def aurc(uncertainty: np.ndarray, risk: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean of :func:`risk_coverage`'s selective risks."""
    return float(np.mean(risk_coverage(uncertainty, risk)[1]))


def oracle_aurc(risk: np.ndarray) -> float:
    """AURC of the ideal ordering, by increasing risk."""
    return aurc(np.asarray(risk, dtype=np.float64), risk)


def e_aurc(uncertainty: np.ndarray, risk: np.ndarray) -> float:
    """Excess AURC over the oracle: AURC - oracle AURC (0 for a perfect ranking)."""
    return aurc(uncertainty, risk) - oracle_aurc(risk)


def failure_auroc(uncertainty: np.ndarray, dice: np.ndarray, failure_dice: float = 0.8) -> float:
    """AUROC of ``uncertainty`` for failure = Dice < ``failure_dice``; NaN when one group is empty."""
    u, d = _checked(uncertainty, dice)
    failed = d < failure_dice
    n_fail, n_ok = int(failed.sum()), int((~failed).sum())
    if n_fail == 0 or n_ok == 0:
        return math.nan
    ranks = rankdata(u)  # mid-ranks for ties
    return float((ranks[failed].sum() - n_fail * (n_fail + 1) / 2) / (n_fail * n_ok))


def failure_detection(uncertainty: np.ndarray, dice: np.ndarray, failure_dice: float = 0.8) -> dict:
    """AURC, E-AURC, the oracle and random (mean risk) AURC with risk = 1 - Dice, and failure AUROC."""
    risk = 1.0 - np.asarray(dice, dtype=np.float64)
    return {"aurc": aurc(uncertainty, risk), "e_aurc": e_aurc(uncertainty, risk), "oracle_aurc": oracle_aurc(risk),
            "random_aurc": float(np.mean(risk)), "failure_auroc": failure_auroc(uncertainty, dice, failure_dice),
            "failure_dice": failure_dice, "n": int(risk.size), "failures": int(np.sum(np.asarray(dice) < failure_dice))}
