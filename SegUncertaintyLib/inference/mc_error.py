"""The maps' Monte Carlo error: how far the mean probability and the entropy map of T random samples may
lie from their T -> infinity values, and sampling in rounds until that error is small enough.

Per voxel, from one window's T samples p_t (C classes), treated as independent draws (MC dropout):
- probability: max over classes k of s_k / sqrt(T), s_k^2 the unbiased variance of p_t,k over samples: the
  standard error of the mean probability (equal to its jackknife standard error);
- entropy: s_g / sqrt(T) / ln C, s_g^2 the unbiased variance of g_t = -sum_k p_t,k ln(mean_k): the
  infinitesimal-jackknife (delta-method) standard error of the normalized entropy H(mean p) / ln C.
Windows are blended with the importance weights like the maps; where windows overlap their means are
averaged, so the blended error is an upper bound there (exact where one window covers the voxel).

Reported per run: the 99th percentile of each map inside the box around the predicted foreground, grown by
``MARGIN_MM`` on every side (the whole volume when nothing is segmented). The error falls as 1 / sqrt(T).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

MARGIN_MM = 10.0
PERCENTILE = 99.0
ERROR_NAMES = ("probability", "entropy")
DEFINITION = ("Monte Carlo standard error of the maps, 99th percentile over the voxels of the box around the "
              f"predicted foreground grown by {MARGIN_MM:g} mm (model grid): probability = max over classes of "
              "the standard error of the mean probability (s / sqrt(T), equal to its jackknife); entropy = the "
              "infinitesimal-jackknife (delta-method) standard error of the normalized entropy map H(mean p) / ln C. "
              "Samples are treated as independent draws; blended windows make it an upper bound where they overlap. "
              "It falls as 1 / sqrt(T)")


def class_pairs(n_classes: int) -> list[tuple[int, int]]:
    """The (k, l) class pairs, k < l, whose products :func:`window_errors` needs summed over samples."""
    return [(k, l) for k in range(n_classes) for l in range(k + 1, n_classes)]  # noqa: E741


def window_errors(mean_p: torch.Tensor, mean_p2: torch.Tensor, mean_cross: torch.Tensor,
                  n_samples: int) -> dict[str, torch.Tensor]:
    """(*w) error maps of one window of T >= 2 samples from E_t[p] and E_t[p^2] (C, *w) and E_t[p_k p_l]
    (one per :func:`class_pairs`, (P, *w)), by elementwise passes (no (C, C, *w) array)."""
    c, scale = mean_p.shape[0], n_samples / (n_samples - 1)
    a = torch.log(mean_p.clamp_min(1e-12))
    variance = ((mean_p2 - mean_p * mean_p) * scale).clamp_min(0.0)  # unbiased, per class
    var_g = (a * a * variance).sum(0)
    for i, (k, l) in enumerate(class_pairs(c)):  # noqa: E741
        var_g += 2.0 * scale * a[k] * a[l] * (mean_cross[i] - mean_p[k] * mean_p[l])
    return {"probability": (variance.amax(0) / n_samples).sqrt(),
            "entropy": (var_g.clamp_min(0.0) / n_samples).sqrt() / math.log(c)}


def foreground_box(labels: np.ndarray, spacing_zyx: tuple[float, float, float],
                   margin_mm: float = MARGIN_MM) -> tuple[slice, ...]:
    """The box of ``labels`` > 0 grown by ``margin_mm`` on each side (clipped); the whole array if empty."""
    found = np.nonzero(labels > 0)
    if not found[0].size:
        return tuple(slice(0, n) for n in labels.shape)
    return tuple(slice(max(0, int(i.min()) - math.ceil(margin_mm / s)), min(n, int(i.max()) + 1 + math.ceil(
        margin_mm / s))) for i, s, n in zip(found, spacing_zyx, labels.shape, strict=True))


def error_percentiles(errors: dict[str, torch.Tensor], box: tuple[slice, ...]) -> dict[str, float]:
    """The PERCENTILE of each error map inside ``box``."""
    return {name: float(np.percentile(errors[name][box].numpy(), PERCENTILE)) for name in ERROR_NAMES}


def next_sample_count(n_samples: int, worst: float, tolerance: float, maximum: int) -> int:
    """The T expected to bring an error of ``worst`` at ``n_samples`` down to ``tolerance`` (1 / sqrt(T)),
    with a 10 % margin, at least one more sample, at most ``maximum``."""
    wanted = math.ceil(1.1 * n_samples * (worst / tolerance) ** 2) if worst > 0 else n_samples
    return min(maximum, max(n_samples + 1, wanted))


def sample_in_rounds(run: Callable[[int], tuple[object, float]], first: int, maximum: int,
                     tolerance: float) -> tuple[object, list[dict]]:
    """Call ``run(T)`` -> (result, worst error) with growing T until the error is <= ``tolerance`` or T =
    ``maximum``; return the last result and the rounds ({"n_samples", "error"} each)."""
    n, rounds = min(first, maximum), []
    while True:
        result, worst = run(n)
        rounds.append({"n_samples": n, "error": worst})
        if worst <= tolerance or n >= maximum:
            return result, rounds
        n = next_sample_count(n, worst, tolerance, maximum)
