"""Temperature scaling (Guo et al., On Calibration of Modern Neural Networks, ICML 2017) for sampled
predictions: one temperature t > 0 divides every pass's logits (or log-probabilities) before the softmax,
and the prediction is the mean over the T passes,

    p_t(v) = (1/T) sum_s softmax(z_s(v) / t),

with t chosen to minimise the negative log-likelihood of that mean predictive probability over the
labelled voxels: NLL(t) = -(1/N) sum_v ln p_t(v)[y_v]. The search is over ln t in [ln t_min, ln t_max] by
scipy's bounded Brent method (the NLL of a mean of softmaxes need not be convex in t; the search finds a
local minimum in the bracket, the global one when the NLL is unimodal, as for T = 1). t > 1 softens, t < 1
sharpens; argmax is unchanged for T = 1 but may change for T > 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ..core.errors import UsageError

BOUNDS = (0.05, 20.0)  # the temperatures searched


CHUNK = 1 << 16  # voxels per block: the NLL of many cases is summed block by block in float64


def _as_samples(logits: np.ndarray) -> np.ndarray:
    """(T, C, N) from (C, N) or (T, C, N), in its own dtype (float16 stays float16 until a block is used)."""
    z = np.asarray(logits)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or z.shape[1] < 2:
        raise UsageError(f"logits must be (C, N) or (T, C, N) with C >= 2 classes, got {np.shape(logits)}")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise UsageError("logits must be finite floating-point numbers")
    return z


def log_mean_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    """ln p_t: (C, N) log of the mean over samples of softmax(logits / temperature); logits (C, N) or (T, C, N)."""
    z = _as_samples(logits).astype(np.float64) / temperature
    log_p = z - logsumexp(z, axis=1, keepdims=True)
    return logsumexp(log_p, axis=0) - math.log(z.shape[0])


def mean_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p_t: (C, N) mean over samples of softmax(logits / temperature)."""
    return np.exp(log_mean_probability(logits, temperature))


def _labels(labels: np.ndarray, z: np.ndarray) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64).ravel()
    if y.shape[0] != z.shape[2] or y.min(initial=0) < 0 or y.max(initial=0) >= z.shape[1]:
        raise UsageError(f"labels must be {z.shape[2]} class indices in 0..{z.shape[1] - 1}")
    return y


def _nll_sum(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """sum_v -ln p_t(v)[y_v] over checked (T, C, N) logits and labels, block by block (float64): per pass
    ln softmax(z_s / t)[y] = z_sy / t - logsumexp_c(z_sc / t), then the log of the mean over passes."""
    total = 0.0
    for start in range(0, y.size, CHUNK):
        block = slice(start, start + CHUNK)
        zb = z[:, :, block].astype(np.float64) / temperature
        yb = y[block]
        top = zb.max(axis=1)  # (T, n)
        log_py = zb[:, yb, np.arange(yb.size)] - top - np.log(np.exp(zb - top[:, None]).sum(axis=1))
        best = log_py.max(axis=0)
        total -= float((best + np.log(np.exp(log_py - best).mean(axis=0))).sum())
    return total


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """-(1/N) sum_v ln p_t(v)[labels_v], natural log; labels (N,) class indices 0..C-1."""
    z = _as_samples(logits)
    y = _labels(labels, z)
    return _nll_sum(z, y, temperature) / max(y.size, 1)


def fit_temperature(logits: np.ndarray | list[np.ndarray], labels: np.ndarray | list[np.ndarray],
                    bounds: tuple[float, float] = BOUNDS, tolerance: float = 1e-6) -> float:
    """The t in ``bounds`` minimising :func:`nll` over all voxels (bounded Brent search on ln t, absolute
    tolerance ``tolerance`` in ln t). logits (C, N) or (T, C, N), or a list of such arrays (cases, same T
    and C) with a list of labels (N_i,): their voxels pooled."""
    cases = list(zip(logits, labels, strict=True)) if isinstance(logits, list) else [(logits, labels)]
    checked = []
    for z, y in cases:
        z = _as_samples(z)
        checked.append((z, _labels(y, z)))
    n = sum(y.size for _, y in checked)
    if n == 0:
        raise UsageError("a temperature needs at least one labelled voxel")

    def pooled(log_t: float) -> float:
        return sum(_nll_sum(z, y, math.exp(log_t)) for z, y in checked) / n

    result = minimize_scalar(pooled, bounds=tuple(map(math.log, bounds)), method="bounded",
                             options={"xatol": tolerance})
    return float(math.exp(result.x))


def case_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """(n,) fold of each case for cross-fitting: K = min(folds, n) folds of near-equal size, seeded shuffle."""
    if n < 2:
        raise UsageError(f"cross-fitting needs at least 2 cases, got {n}")
    return np.random.default_rng(seed).permutation(n) % min(folds, n)


def cross_fitted_temperatures(logits: list[np.ndarray], labels: list[np.ndarray], folds: int = 5, seed: int = 0,
                              bounds: tuple[float, float] = BOUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitting over cases: (fold of each case (n,), t of each fold (K,)), where fold k's t is fitted
    on the other folds' cases only, so a case's held-out prediction never saw its own labels."""
    fold = case_folds(len(logits), folds, seed)
    ts = np.array([fit_temperature([z for z, f in zip(logits, fold, strict=True) if f != k],
                                   [y for y, f in zip(labels, fold, strict=True) if f != k], bounds)
                   for k in range(int(fold.max()) + 1)])
    return fold, ts
