"""Predicted Dice per class with a conformal interval, from subject scores (no reference needed at use).

Model: logit(Dice) regressed on the subject scores plus the empty-prediction flag (1 = empty), with a ridge
regression on standardised features (missing scores, e.g. an empty segment's null cv, imputed by the
training median; the flag carries what the imputation hides). Dice is clipped to [EPS, 1 - EPS] before
the logit.

Interval: CV+ (Barber, Candes, Ramdas and Tibshirani, Predictive inference with the jackknife+, Annals of
Statistics 2021) by MAPIE's ``CrossConformalRegressor(method="plus")`` with K-fold splits and absolute
residual scores, at confidence level 1 - alpha. Finite-sample guarantee, for a new case exchangeable with
the n calibration cases: P(Dice in interval) >= 1 - 2 alpha - min(2 (1 - 1/K) / (n/K + 1), (1 - K/n) /
(K + 1)) (their Theorem 4), marginal over cases; in practice, and in this module's tests, coverage is close
to 1 - alpha. CV+ rather than split conformal because calibration sets are small (tens of cases) and CV+
uses every case both to fit and to calibrate.

On the Dice scale, the interval is [sigmoid(lo), sigmoid(hi)] with an end at EPS (or 1 - EPS) widened to 0
(or 1), so that it covers the unclipped Dice whenever the logit interval covers the clipped one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import UsageError

EPS = 1e-3
METHOD = "CV+ (jackknife+ family, Barber et al. 2021) by MAPIE CrossConformalRegressor(method='plus')"


def logit_dice(dice: np.ndarray) -> np.ndarray:
    """ln(d / (1 - d)) of Dice clipped to [EPS, 1 - EPS]."""
    d = np.clip(np.asarray(dice, dtype=np.float64), EPS, 1 - EPS)
    return np.log(d / (1 - d))


def _dice_scale(logit: np.ndarray, lower: bool = False, upper: bool = False) -> np.ndarray:
    d = 1.0 / (1.0 + np.exp(-np.asarray(logit, dtype=np.float64)))
    if lower:
        d = np.where(d <= EPS, 0.0, d)
    if upper:
        d = np.where(d >= 1 - EPS, 1.0, d)
    return d


def feature_matrix(scores: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """(n, k + 1): the (n, k) scores (NaN where undefined) and the empty-prediction flag as 0/1."""
    x = np.asarray(scores, dtype=np.float64)
    flag = np.asarray(empty, dtype=bool)
    if x.ndim != 2 or flag.shape != (x.shape[0],):
        raise UsageError(f"scores must be (n, k) and the empty flags (n,), got {x.shape} and {flag.shape}")
    return np.column_stack([x, flag.astype(np.float64)])


@dataclass
class DicePredictor:
    """A fitted CV+ predictor of Dice; ``coverage`` = 1 - alpha, the confidence level asked of MAPIE."""

    regressor: object
    coverage: float
    n: int
    folds: int
    method: str = METHOD

    def predict(self, scores: np.ndarray, empty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted Dice (n,) and its interval (n, 2) on the Dice scale. Fitted on fewer than
        1 / min(alpha, 1 - alpha) cases (MAPIE's minimum; e.g. 9 cases at alpha = 0.1, as in the inner folds
        of a small calibration's out-of-fold predictions) the interval is [0, 1]: no finite one is offered."""
        x = feature_matrix(scores, empty)
        if self.n < 1.0 / min(1.0 - self.coverage, self.coverage) - 1e-9:
            point = self.regressor.predict(x)
            return _dice_scale(point), np.tile([0.0, 1.0], (len(point), 1))
        point, interval = self.regressor.predict_interval(x)
        lo, hi = interval[:, 0, 0], interval[:, 1, 0]
        return _dice_scale(point), np.column_stack([_dice_scale(lo, lower=True), _dice_scale(hi, upper=True)])


def fit_dice_predictor(scores: np.ndarray, empty: np.ndarray, dice: np.ndarray, alpha: float = 0.1,
                       folds: int = 10, seed: int = 0) -> DicePredictor:
    """CV+ predictor of Dice from n calibration cases: ``scores`` (n, k), ``empty`` (n,), ``dice`` (n,) in
    [0, 1]; K = min(folds, n) shuffled folds (seeded)."""
    from mapie.regression import CrossConformalRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha must lie in (0, 1), got {alpha}")
    x, y = feature_matrix(scores, empty), np.asarray(dice, dtype=np.float64)
    if y.shape != (x.shape[0],) or not np.isfinite(y).all() or y.min() < 0 or y.max() > 1:
        raise UsageError("Dice must be one finite value in [0, 1] per case")
    if x.shape[0] < 3:
        raise UsageError(f"a predicted Dice needs at least 3 calibration cases, got {x.shape[0]}")
    k = min(folds, x.shape[0])
    estimator = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              Ridge(alpha=1.0))
    regressor = CrossConformalRegressor(estimator, confidence_level=1 - alpha, method="plus",
                                        cv=KFold(k, shuffle=True, random_state=seed))
    regressor.fit_conformalize(x, logit_dice(y))
    return DicePredictor(regressor, 1 - alpha, x.shape[0], k)
