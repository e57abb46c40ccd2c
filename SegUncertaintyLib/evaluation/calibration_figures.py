"""The ``calibrate`` report's figures (PNG, matplotlib's Agg backend), drawn from the calibration document
alone (evaluation/calibration_fit.py computed every point):

- ``referral_curve.png``: the mean missed-error fraction over the calibration cases against the threshold
  λ (``referral.curve``), the conformal bound n/(n+1)·mean + 1/(n+1), α and λ̂;
- ``risk_coverage_<class>.png``: per class, the risk-coverage curve (risk = 1 - Dice; selective risk of
  the cases accepted from the least uncertain) of each subject score and of the out-of-fold predicted
  Dice, with the oracle (by risk) and random (mean risk) references;
- ``predicted_dice_<class>.png``: per class, out-of-fold predicted Dice with its CV+ interval against the
  actual Dice, and the fraction of intervals that hold the actual Dice.

The temperature's reliability diagram is drawn with the temperature (evaluation/temperature_fit.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..calibration.failure import risk_coverage  # noqa: E402
from ..calibration.store import threshold_from_json  # noqa: E402
from ..inference.scores import SUBJECT_SCORES  # noqa: E402
from .calibration_fit import detection_score  # noqa: E402

REFERRAL_PNG = "referral_curve.png"


def class_file(prefix: str, name: str) -> str:
    """``<prefix>_<class>.png`` with the class name made a safe file name."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.png"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def referral_figure(doc: dict, path: Path) -> dict:
    """Draw the referral curve to ``path``; return the points drawn ({"threshold", "mean_missed_error_fraction"},
    read back from the plotted line)."""
    referral, n, alpha = doc["referral"], doc["n"], doc["alpha"]
    x = np.asarray(referral["curve"]["threshold"], dtype=float)
    y = np.asarray(referral["curve"]["mean_missed_error_fraction"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    (line,) = ax.step(x, y, where="post", label="mean missed-error fraction (calibration cases)")
    ax.step(x, n / (n + 1) * y + 1 / (n + 1), where="post", linestyle="--", label="bound n/(n+1)·mean + 1/(n+1)")
    ax.axhline(alpha, color="red", linewidth=1, label=f"α = {alpha:g}")
    threshold = threshold_from_json(referral["threshold"])
    if math.isfinite(threshold):
        ax.axvline(threshold, color="black", linewidth=1, label=f"λ̂ = {threshold:.4g}")
    ax.set_xlabel(f"threshold λ on {doc['map']} (flagged: map ≥ λ)")
    ax.set_ylabel("fraction of errors not flagged")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    drawn = line.get_xydata()
    _save(fig, path)
    return {"threshold": drawn[:, 0].tolist(), "mean_missed_error_fraction": drawn[:, 1].tolist()}


def _detection_columns(block: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per score (and the out-of-fold predicted Dice) the uncertainty oriented higher = more uncertain, as
    the fit's failure detection uses it, and the cases' Dice."""
    training = block["predicted_dice"]["training"]
    x = np.array([[np.nan if v is None else v for v in row] for row in training["scores"]], dtype=float)
    empty, dice = np.asarray(training["empty"], dtype=bool), np.asarray(training["dice"], dtype=float)
    features = block["predicted_dice"]["features"]
    columns = {s: detection_score(s, x[:, features.index(s)], empty) for s in SUBJECT_SCORES if s in features}
    columns["predicted_dice"] = -np.asarray(list(block["predicted_dice"]["out_of_fold"].values()), dtype=float)
    return columns, dice


def risk_coverage_figure(block: dict, name: str, path: Path) -> dict[str, list[float]]:
    """Draw one class's risk-coverage curves to ``path``; return each curve's selective risks."""
    columns, dice = _detection_columns(block)
    risk = 1.0 - dice
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = {}
    for score, u in columns.items():
        coverage, selective = risk_coverage(u, risk)
        curves[score] = selective.tolist()
        ax.plot(coverage, selective, label=f"{score} (AURC {block['failure_detection'][score]['aurc']:.3g})")
    coverage, oracle = risk_coverage(risk, risk)
    ax.plot(coverage, oracle, color="black", linestyle=":", label="oracle (by risk)")
    ax.axhline(float(risk.mean()), color="grey", linestyle="--", label="random (mean risk)")
    ax.set_xlabel("coverage (fraction of cases accepted, least uncertain first)")
    ax.set_ylabel("selective risk (mean 1 - Dice)")
    ax.set_title(f"{name}: risk-coverage on held-out folds")
    ax.legend(fontsize=7)
    _save(fig, path)
    return curves


def predicted_dice_figure(block: dict, name: str, path: Path) -> float:
    """Draw one class's out-of-fold predicted Dice with intervals against the actual Dice to ``path``; return
    the fraction of cases whose interval holds their actual Dice."""
    dice = np.asarray(block["predicted_dice"]["training"]["dice"], dtype=float)
    predicted = np.asarray(list(block["predicted_dice"]["out_of_fold"].values()), dtype=float)
    interval = np.asarray(block["predicted_dice"]["out_of_fold_interval"], dtype=float)
    inside = (interval[:, 0] <= dice) & (dice <= interval[:, 1])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.errorbar(dice, predicted, yerr=[predicted - interval[:, 0], interval[:, 1] - predicted], fmt="o",
                markersize=3, linewidth=0.8, capsize=2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--")
    ax.set_xlabel("actual Dice")
    ax.set_ylabel(f"predicted Dice (out of fold), interval at coverage {block['predicted_dice']['coverage']:g}")
    ax.set_title(f"{name}: {inside.mean():.0%} of intervals hold the actual Dice")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    _save(fig, path)
    return float(inside.mean())


def write_figures(doc: dict, out: Path) -> list[str]:
    """Draw every figure into ``out``; return report.md's lines linking them."""
    lines = ["## Figures", "", f"Referral curve: ![referral curve]({REFERRAL_PNG})", ""]
    referral_figure(doc, out / REFERRAL_PNG)
    for name, block in doc["classes"].items():
        rc, pd = class_file("risk_coverage", name), class_file("predicted_dice", name)
        risk_coverage_figure(block, name, out / rc)
        held = predicted_dice_figure(block, name, out / pd)
        lines += [f"Class {name}, risk-coverage curves: ![risk-coverage {name}]({rc})", "",
                  f"Class {name}, predicted vs actual Dice ({held:.0%} of the out-of-fold intervals hold the "
                  f"actual Dice): ![predicted Dice {name}]({pd})", ""]
    return lines
