"""Calibration: ECE, MCE, NLL, Brier and reliability data, in two named conventions.

- Foreground probability (Jungo and Reyes, MICCAI 2019, their public code; :meth:`BinStats.from_arrays`):
  10 bins with edges ``linspace(0, 1 + 1e-8, 11)``, each bin ``[a, b)`` (so p = 1 falls in the last bin);
  per bin, *confidence* is the mean foreground probability and *accuracy* the fraction of foreground
  voxels; binary NLL and Brier of the foreground probability.
- Top label (Mehrtash et al., IEEE TMI 2020, eqs. 3-5; :meth:`BinStats.top_label`): confidence = the
  probability of the predicted (argmax) class, accuracy = 1 when the predicted class is the reference
  class; M = 10 bins ((m-1)/M, m/M]; multi-class NLL -mean ln p(reference class) (eq. 3) and Brier
  mean over voxels of (1/K) sum_k (p_k - y_k)^2 (eq. 4).

In both, empty bins are dropped and a bin weighs count / N. Statistics are sums per bin, so cases are
accumulated one at a time and pooled by adding (:meth:`BinStats.__add__`), never by holding every voxel
of every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import InputImageError

N_BINS = 10
EDGES = np.linspace(0.0, 1.0 + 1e-8, N_BINS + 1)
TOP_LABEL_EDGES = np.linspace(0.0, 1.0, N_BINS + 1)
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for the NLL


@dataclass
class BinStats:
    """Per-bin voxel counts, sums of probability and of the label, plus NLL and Brier sums (all float64)."""

    count: np.ndarray
    sum_p: np.ndarray
    sum_y: np.ndarray
    sum_nll: float = 0.0
    sum_brier: float = 0.0

    @classmethod
    def empty(cls) -> BinStats:
        return cls(np.zeros(N_BINS), np.zeros(N_BINS), np.zeros(N_BINS))

    @classmethod
    def from_arrays(cls, prob: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> BinStats:
        """Statistics of foreground probability ``prob`` (any shape, 0-1) against binary ``label``."""
        p = np.asarray(prob, dtype=np.float64)
        y = np.asarray(label).astype(bool)
        if p.shape != y.shape:
            raise InputImageError(f"probability {p.shape} and label {y.shape} differ in shape")
        if mask is not None:
            p, y = p[np.asarray(mask, dtype=bool)], y[np.asarray(mask, dtype=bool)]
        p, y = p.ravel(), y.ravel()
        if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
            raise InputImageError("probabilities must be finite and within [0, 1]")
        index = np.clip(np.digitize(p, EDGES, right=False) - 1, 0, N_BINS - 1)
        pc = np.clip(p, EPS, 1 - EPS)
        return cls(
            count=np.bincount(index, minlength=N_BINS).astype(np.float64),
            sum_p=np.bincount(index, weights=p, minlength=N_BINS),
            sum_y=np.bincount(index, weights=y.astype(np.float64), minlength=N_BINS),
            sum_nll=float(-(np.log(pc[y]).sum() + np.log(1 - pc[~y]).sum())),
            sum_brier=float(((p - y) ** 2).sum()),
        )

    @classmethod
    def top_label(cls, probabilities: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> BinStats:
        """Mehrtash et al. 2020's top-label statistics: ``probabilities`` (K, ...) per class (summing to 1),
        ``label`` (...) the reference class index 0..K-1; bins ((m-1)/M, m/M]."""
        p = np.asarray(probabilities, dtype=np.float64)
        y = np.asarray(label).astype(np.int64)
        if p.shape[1:] != y.shape:
            raise InputImageError(f"probabilities {p.shape} and label {y.shape} differ in shape")
        if mask is not None:
            keep = np.asarray(mask, dtype=bool)
            p, y = p[:, keep], y[keep]
        p, y = p.reshape(p.shape[0], -1), y.ravel()
        if y.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
            raise InputImageError("probabilities must be finite and within [0, 1]")
        if y.size and (y.min() < 0 or y.max() >= p.shape[0]):
            raise InputImageError(f"reference labels must lie in 0..{p.shape[0] - 1}")
        predicted = p.argmax(0)
        confidence = p.max(0)
        correct = (predicted == y).astype(np.float64)
        index = np.clip(np.digitize(confidence, TOP_LABEL_EDGES, right=True) - 1, 0, N_BINS - 1)
        p_true = np.take_along_axis(p, y[None], 0)[0]
        brier = ((p * p).sum(0) - 2.0 * p_true + 1.0) / p.shape[0]  # sum_k (p_k - y_k)^2 / K without a one-hot
        return cls(
            count=np.bincount(index, minlength=N_BINS).astype(np.float64),
            sum_p=np.bincount(index, weights=confidence, minlength=N_BINS),
            sum_y=np.bincount(index, weights=correct, minlength=N_BINS),
            sum_nll=float(-np.log(np.clip(p_true, EPS, 1.0)).sum()),
            sum_brier=float(brier.sum()),
        )

    def __add__(self, other: BinStats) -> BinStats:
        return BinStats(self.count + other.count, self.sum_p + other.sum_p, self.sum_y + other.sum_y,
                        self.sum_nll + other.sum_nll, self.sum_brier + other.sum_brier)

    @property
    def n(self) -> float:
        return float(self.count.sum())

    def reliability(self) -> dict[str, np.ndarray]:
        """Per non-empty bin: lower edge, upper edge, confidence, accuracy, count."""
        keep = self.count > 0
        return {"lower": EDGES[:-1][keep], "upper": EDGES[1:][keep],
                "confidence": self.sum_p[keep] / self.count[keep],
                "accuracy": self.sum_y[keep] / self.count[keep], "count": self.count[keep]}

    def ece(self) -> float:
        """Expected calibration error: sum over bins of count / N * |accuracy - confidence|; NaN if empty."""
        r = self.reliability()
        return float((r["count"] / self.n * np.abs(r["accuracy"] - r["confidence"])).sum()) if self.n else np.nan

    def signed_error(self) -> float:
        """Paper 001's code: unweighted mean over non-empty bins of (accuracy - confidence), in foreground
        probability space; > 0 under-confident, < 0 over-confident (not an ECE); NaN if empty."""
        r = self.reliability()
        return float((r["accuracy"] - r["confidence"]).mean()) if self.n else np.nan

    def mce(self) -> float:
        """Maximum calibration error over non-empty bins; NaN if empty."""
        r = self.reliability()
        return float(np.abs(r["accuracy"] - r["confidence"]).max()) if self.n else np.nan

    def nll(self) -> float:
        """Mean negative log-likelihood (nats) of the reference label, probabilities clipped at 1e-7."""
        return self.sum_nll / self.n if self.n else np.nan

    def brier(self) -> float:
        """Mean squared difference between probability and label (top label: averaged over the K classes)."""
        return self.sum_brier / self.n if self.n else np.nan

    def summary(self) -> dict[str, float]:
        return {"ece": self.ece(), "mce": self.mce(), "nll": self.nll(), "brier": self.brier(), "voxels": self.n}


def probability_from_uncertainty(prediction: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """Paper 001's foreground probability for methods with an uncertainty q in [0, 1] but no probability.

    y (1 - q/2) + (1 - y) q/2 for the binary prediction y: certain voxels get 0 or 1, q = 1 gives 0.5.
    """
    y = np.asarray(prediction, dtype=bool)
    q = np.asarray(uncertainty, dtype=np.float64)
    return np.where(y, 1.0 - 0.5 * q, 0.5 * q)


def calibration_split(pooled_errors: list[float], subject_errors: np.ndarray) -> dict[str, float]:
    """Paper 001's split of subjects into under-, over- and well-calibrated.

    pooled_errors: the dataset-level signed error of each method (bins summed over subjects);
    subject_errors: (subjects, methods) signed errors. The tolerance is the 90th percentile of the pooled
    errors, taken as an absolute value (with one method it is that method's own pooled error, which can be
    negative; the authors' code assumes it is not); a subject's error is its mean over methods;
    > tolerance under-confident, < -tolerance over-confident, otherwise well calibrated.
    """
    tolerance = abs(float(np.percentile(np.asarray(pooled_errors, dtype=float), 90)))
    mean = np.nanmean(np.atleast_2d(np.asarray(subject_errors, dtype=float)), axis=1)
    return {"tolerance": tolerance, "subjects": int(mean.size),
            "underconfident": float(np.mean(mean > tolerance)),
            "overconfident": float(np.mean(mean < -tolerance)),
            "calibrated": float(np.mean((mean <= tolerance) & (mean >= -tolerance)))}
