"""Cohort-level measurements: subject scores against quality (paper 000, 004), out-of-distribution
AUROC (paper 004) and the generalized energy distance to several annotators (paper 002)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..inference.scores import pairwise_iou, sample_overlaps


def logit_dice(dice: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """log(Dice / (1 - Dice)) with Dice clipped to [eps, 1 - eps] (paper 004 correlates against it)."""
    d = np.clip(np.asarray(dice, dtype=np.float64), eps, 1 - eps)
    return np.log(d / (1 - d))


def score_quality_correlation(score: np.ndarray, dice: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation (with two-sided p-values) of a subject score with Dice, and
    Pearson with logit(Dice). NaN pairs are dropped; NaN results with fewer than 3 subjects."""
    s, d = np.asarray(score, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    out = {"n": int(s.size)}
    if s.size < 3 or np.ptp(s) == 0 or np.ptp(d) == 0:
        return out | {k: math.nan for k in ("spearman", "spearman_p", "pearson", "pearson_p",
                                            "pearson_logit", "pearson_logit_p")}
    sp, pe, pl = stats.spearmanr(s, d), stats.pearsonr(s, d), stats.pearsonr(s, logit_dice(d))
    return out | {"spearman": float(sp.statistic), "spearman_p": float(sp.pvalue),
                  "pearson": float(pe.statistic), "pearson_p": float(pe.pvalue),
                  "pearson_logit": float(pl.statistic), "pearson_logit_p": float(pl.pvalue)}


def ood_auroc(score: np.ndarray, is_ood: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling out-of-distribution cases (True) from the
    rest, higher score = more likely OOD; ties count one half (Mann-Whitney U / n1 n2)."""
    s, y = np.asarray(score, dtype=np.float64), np.asarray(is_ood, bool)
    if y.all() or not y.any():
        return math.nan
    u = stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u / (y.sum() * (~y).sum()))


def generalized_energy_distance(samples: list[np.ndarray], annotations: list[np.ndarray]) -> dict[str, float]:
    """GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')] with d = 1 - IoU, all pairs with replacement.

    Returns the squared distance and its three terms; the last two are the sample diversity and the
    annotator disagreement.
    """
    masks = np.stack([np.asarray(m, bool) for m in [*samples, *annotations]])
    bits = np.packbits(masks, axis=0, bitorder="little")  # the engine's packed-sample layout
    distance = 1.0 - pairwise_iou(sample_overlaps(bits, len(masks)))  # IoU of two empty masks = 1
    n = len(samples)
    cross = float(distance[:n, n:].mean())
    diversity = float(distance[:n, :n].mean())
    disagreement = float(distance[n:, n:].mean())
    return {"ged2": 2 * cross - diversity - disagreement, "cross": cross, "sample_diversity": diversity,
            "annotator_disagreement": disagreement}

