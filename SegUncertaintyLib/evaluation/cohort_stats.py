"""Cohort-level measurements: subject scores against quality (Hoebel et al. 2019; Mehrtash et al. 2020),
out-of-distribution AUROC (Mehrtash et al. 2020) and the generalized energy distance to several annotators
(Czolbe et al. 2021).

Small cohorts: p-values come from permutation tests (``scipy.stats.permutation_test``), exact (every
permutation enumerated) whenever the number of permutations is at most ``N_RESAMPLES``, else Monte Carlo
with a fixed seed; 95 % intervals are percentile intervals of a seeded ``scipy.stats.bootstrap``
(paired resampling of cases for correlations, resampling within each group for AUROC).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from ..core.errors import UsageError
from ..inference.scores import pairwise_iou, sample_diversity, sample_overlaps

N_RESAMPLES = 9999
SEED = 0
MIN_CASES_INTERVAL = 5  # fewer cases: no bootstrap interval (too few distinct resamples)
STATISTICS = {
    "p_values": f"two-sided permutation p-values (scipy.stats.permutation_test): exact enumeration when the "
                f"permutations number at most {N_RESAMPLES}, else {N_RESAMPLES} random permutations (seed {SEED})",
    "intervals": f"95 % percentile bootstrap (scipy.stats.bootstrap, {N_RESAMPLES} resamples, seed {SEED}); "
                 "correlations resample cases in pairs, AUROC resamples each group; resamples where the "
                 "statistic is undefined (all values equal) are left out; none below "
                 f"{MIN_CASES_INTERVAL} cases (n/a)",
}


def logit_dice(dice: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """log(Dice / (1 - Dice)) with Dice clipped to [eps, 1 - eps] (Mehrtash et al. 2020 correlate against it)."""
    d = np.clip(np.asarray(dice, dtype=np.float64), eps, 1 - eps)
    return np.log(d / (1 - d))


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r along ``axis`` (vectorized); NaN where either variable is constant."""
    xm = x - x.mean(axis, keepdims=True)
    ym = y - y.mean(axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xm * ym).sum(axis) / np.sqrt((xm * xm).sum(axis) * (ym * ym).sum(axis))


def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along ``axis``: Pearson r of the ranks (average ranks for ties)."""
    return pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis)


def permutation_p(x: np.ndarray, y: np.ndarray, statistic) -> float:
    """Two-sided permutation p-value of a correlation ``statistic(x, y, axis)``, permuting the pairing."""
    test = stats.permutation_test((x,), lambda a, axis=-1: statistic(a, y, axis), permutation_type="pairings",
                                  n_resamples=N_RESAMPLES, alternative="two-sided", vectorized=True,
                                  random_state=SEED)
    return float(test.pvalue)


def bootstrap_interval(data: tuple[np.ndarray, ...], statistic, paired: bool) -> list[float]:
    """[low, high] 95 % percentile bootstrap interval; NaN below MIN_CASES_INTERVAL cases."""
    if min(len(d) for d in data) < (MIN_CASES_INTERVAL if paired else 2) or sum(map(len, data)) < MIN_CASES_INTERVAL:
        return [math.nan, math.nan]
    with warnings.catch_warnings():  # undefined resamples are dropped below, not an error
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=N_RESAMPLES,
                                 method="percentile", random_state=SEED)
    values = result.bootstrap_distribution
    values = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if values.size else [math.nan, math.nan]


def score_quality_correlation(score: np.ndarray, dice: np.ndarray) -> dict:
    """Spearman rho with Dice (Hoebel et al. 2019) and Pearson r with Dice and with logit(Dice) (Mehrtash et
    al. 2020), each with its permutation p-value and 95 % bootstrap interval (see STATISTICS). NaN pairs are
    dropped; NaN results with fewer than 3 subjects or a constant variable."""
    s, d = np.asarray(score, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    out: dict = {"n": int(s.size)}
    tests = {"spearman": (spearman, d), "pearson": (pearson, d), "pearson_logit": (pearson, logit_dice(d))}
    for name, (statistic, y) in tests.items():
        if s.size < 3 or np.ptp(s) == 0 or np.ptp(y) == 0:
            out |= {name: math.nan, f"{name}_p": math.nan, f"{name}_ci95": [math.nan, math.nan]}
            continue
        out[name] = float(statistic(s, y))
        out[f"{name}_p"] = permutation_p(s, y, statistic)
        out[f"{name}_ci95"] = bootstrap_interval((s, y), statistic, paired=True)
    return out


def auroc(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(positive > negative) + P(equal) / 2 over all pairs, along ``axis`` (vectorized)."""
    a, b = np.expand_dims(positive, -1), np.expand_dims(negative, -2)
    if axis not in (-1, positive.ndim - 1):
        raise UsageError("auroc works along the last axis")
    return ((a > b).mean((-2, -1)) + 0.5 * (a == b).mean((-2, -1)))


def ood_auroc(score: np.ndarray, is_ood: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling out-of-distribution cases (True) from the
    rest, higher score = more likely OOD; ties count one half (Mann-Whitney U / n1 n2)."""
    s, y = np.asarray(score, dtype=np.float64), np.asarray(is_ood, bool)
    if y.all() or not y.any():
        return math.nan
    u = stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u / (y.sum() * (~y).sum()))


def ood_detection(ood_scores: np.ndarray, in_scores: np.ndarray) -> dict:
    """AUROC of a score (higher = more uncertain) for OOD cases against in-distribution cases, with its
    two-sided permutation p-value (H0: AUROC = 0.5, group labels exchangeable) and 95 % bootstrap interval.
    NaN scores are dropped; NaN results when a group is empty."""
    a = np.asarray(ood_scores, dtype=np.float64)
    b = np.asarray(in_scores, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out: dict = {"n_ood": int(a.size), "n_in_distribution": int(b.size)}
    if not a.size or not b.size:
        return out | {"auroc": math.nan, "auroc_p": math.nan, "auroc_ci95": [math.nan, math.nan]}
    value = float(auroc(a, b))
    return out | {"auroc": value, "auroc_p": _auroc_permutation_p(a, b, value),
                  "auroc_ci95": bootstrap_interval((a, b), auroc, paired=False)}


def _auroc_permutation_p(a: np.ndarray, b: np.ndarray, value: float) -> float:
    """Two-sided permutation p of an AUROC (scipy's convention 2 min(P(>=), P(<=)), capped at 1). scipy needs
    two cases per group; with a single case in a group, its n + 1 placements are enumerated here."""
    if min(a.size, b.size) >= 2:
        return float(stats.permutation_test((a, b), lambda x, y, axis=-1: auroc(x, y, axis), vectorized=True,
                                            permutation_type="independent", n_resamples=N_RESAMPLES,
                                            alternative="two-sided", random_state=SEED).pvalue)
    values = np.concatenate([a, b])
    single = a.size == 1
    null = np.array([auroc(values[i:i + 1], np.delete(values, i)) if single
                     else auroc(np.delete(values, i), values[i:i + 1]) for i in range(values.size)])
    eps = 1e-12 * max(1.0, abs(value))  # scipy's tolerance for ties with the observed statistic
    return float(min(1.0, 2 * min(np.mean(null >= value - eps), np.mean(null <= value + eps))))


def generalized_energy_distance(samples: list[np.ndarray], annotations: list[np.ndarray]) -> dict[str, float]:
    """GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')] with d = 1 - IoU, all pairs with replacement.

    Returns the squared distance and its three terms; the last two are the sample diversity and the
    annotator disagreement.
    """
    masks = np.stack([np.asarray(m, bool) for m in [*samples, *annotations]])
    bits = np.packbits(masks, axis=0, bitorder="little")  # the engine's packed-sample layout
    inter = sample_overlaps(bits, len(masks))
    distance = 1.0 - pairwise_iou(inter)  # IoU of two empty masks = 1
    n = len(samples)
    cross = float(distance[:n, n:].mean())
    diversity = sample_diversity(inter[:n, :n])  # the same definition as the subject score
    disagreement = float(distance[n:, n:].mean())
    return {"ged2": 2 * cross - diversity - disagreement, "cross": cross, "ged_sample_diversity": diversity,
            "annotator_disagreement": disagreement}

