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


def _as_samples(logits: np.ndarray) -> np.ndarray:
    """(T, C, N) float64 from (C, N) or (T, C, N)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or z.shape[1] < 2:
        raise UsageError(f"logits must be (C, N) or (T, C, N) with C >= 2 classes, got {np.shape(logits)}")
    if not np.isfinite(z).all():
        raise UsageError("logits must be finite")
    return z


def log_mean_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    """ln p_t: (C, N) log of the mean over samples of softmax(logits / temperature); logits (C, N) or (T, C, N)."""
    z = _as_samples(logits) / temperature
    log_p = z - logsumexp(z, axis=1, keepdims=True)
    return logsumexp(log_p, axis=0) - math.log(z.shape[0])


def mean_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p_t: (C, N) mean over samples of softmax(logits / temperature)."""
    return np.exp(log_mean_probability(logits, temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """-(1/N) sum_v ln p_t(v)[labels_v], natural log; labels (N,) class indices 0..C-1."""
    y = np.asarray(labels).astype(np.int64).ravel()
    log_p = log_mean_probability(logits, temperature)
    if y.shape[0] != log_p.shape[1] or y.min(initial=0) < 0 or y.max(initial=0) >= log_p.shape[0]:
        raise UsageError(f"labels must be {log_p.shape[1]} class indices in 0..{log_p.shape[0] - 1}")
    return float(-log_p[y, np.arange(y.size)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = BOUNDS,
                    tolerance: float = 1e-6) -> float:
    """The t in ``bounds`` minimising :func:`nll` (bounded Brent search on ln t, absolute tolerance
    ``tolerance`` in ln t). logits (C, N) or (T, C, N); labels (N,)."""
    z, y = _as_samples(logits), np.asarray(labels).astype(np.int64).ravel()
    nll(z[:, :, :1], y[:1])  # checks labels' range on one voxel before the search
    result = minimize_scalar(lambda log_t: nll(z, y, math.exp(log_t)), bounds=tuple(map(math.log, bounds)),
                             method="bounded", options={"xatol": tolerance})
    return float(math.exp(result.x))
