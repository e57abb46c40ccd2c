"""Subject-level uncertainty scores, without ground truth, per foreground class.

Computed on the model grid from the per-sample segmentations (bits) and the stitched maps:
- cv: coefficient of variation std/mean (ddof=1) of the segmented volume over samples (paper 000, Roy et al.);
- dpw: mean Dice over all pairs of distinct samples (1 for a pair of empty masks) (paper 000);
- ulabelled: mean normalized predictive entropy inside the predicted segment (paper 000);
- segment_entropy: mean one-vs-rest binary entropy (bits) of the mean probability over the predicted
  segment (paper 004);
- volume_ml with the 2.5-97.5 percentile interval of the sample volumes;
- diversity: E[1 - IoU(s, s')] over all T^2 ordered sample pairs, drawn with replacement as in paper 002
  (the last term of the generalized energy distance; 0 when all samples agree).
"""

from __future__ import annotations

import numpy as np
import torch

from .maps import binary_entropy

DEFINITIONS = {
    "cv": ("Coefficient of variation of the segmented volume over samples (std / mean, ddof=1)",
           "higher = more uncertain"),
    "dpw": ("Mean pairwise Dice between distinct samples", "lower = more uncertain"),
    "ulabelled": ("Mean normalized predictive entropy (0-1) inside the predicted segment",
                  "higher = more uncertain"),
    "segment_entropy": ("Mean binary entropy (bits, 0-1) of the class probability over the predicted segment",
                        "higher = more uncertain"),
    "volume_ml": ("Volume of the predicted segment on the input grid, mL", "information"),
    "volume_ml_samples_mean": ("Mean volume of the per-sample segmentations, mL", "information"),
    "volume_ml_interval95": ("2.5 and 97.5 percentiles of the per-sample volumes, mL",
                             "wider = more uncertain"),
    "diversity": ("Sample diversity: mean 1 - IoU over all sample pairs drawn with replacement "
                  "(last term of the generalized energy distance)", "higher = more uncertain"),
}


def sample_overlaps(bits: np.ndarray, n_samples: int, chunk: int = 1 << 20) -> np.ndarray:
    """Intersection counts between every pair of samples: (T, T) int64, diagonal = sample sizes.

    bits: (ceil(T/8), ...) uint8 as produced by the engine for one class.
    """
    flat = bits.reshape(bits.shape[0], -1)
    inter = np.zeros((n_samples, n_samples), dtype=np.float64)
    for start in range(0, flat.shape[1], chunk):
        part = flat[:, start:start + chunk]
        part = part[:, part.any(0)]  # only voxels some sample labels
        if part.shape[1] == 0:
            continue
        x = np.unpackbits(np.ascontiguousarray(part.T), axis=1, bitorder="little")[:, :n_samples]
        x = x.astype(np.float32)
        inter += (x.T @ x).astype(np.float64)
    return np.rint(inter).astype(np.int64)


def pairwise_dice(inter: np.ndarray) -> np.ndarray:
    """(T, T) Dice from intersection counts; 1 where both masks are empty."""
    sizes = np.diag(inter).astype(np.float64)
    denom = sizes[:, None] + sizes[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / denom, 1.0)


def pairwise_iou(inter: np.ndarray) -> np.ndarray:
    """(T, T) IoU from intersection counts; 1 where both masks are empty."""
    sizes = np.diag(inter).astype(np.float64)
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 1.0)


def volume_scores(inter: np.ndarray, voxel_ml: float) -> dict:
    """cv, dpw, diversity and sample-volume statistics from the (T, T) intersection counts."""
    t = inter.shape[0]
    volumes = np.diag(inter) * voxel_ml
    out: dict = {"volume_ml_samples_mean": float(volumes.mean()),
                 "volume_ml_interval95": [float(v) for v in np.percentile(volumes, [2.5, 97.5])]}
    if t < 2:
        out.update(cv=None, dpw=None, diversity=None)
        return out
    mean = volumes.mean()
    out["cv"] = float(volumes.std(ddof=1) / mean) if mean > 0 else None
    upper = np.triu_indices(t, k=1)
    out["dpw"] = float(pairwise_dice(inter)[upper].mean())
    out["diversity"] = float((1.0 - pairwise_iou(inter)).mean())
    return out


def subject_scores(
    bits: torch.Tensor,
    mean_p: torch.Tensor,
    entropy_map: torch.Tensor,
    prediction: torch.Tensor,
    voxel_ml: float,
    n_samples: int,
    labels: dict[int, str],
    input_volumes_ml: dict[int, float] | None = None,
) -> dict[str, dict]:
    """Scores per foreground class name.

    bits: (C-1, ceil(T/8), *S) uint8; mean_p: (C, *S); entropy_map, prediction: (*S) on the model grid.
    input_volumes_ml: volume of each class in the final input-grid labelmap (else the model grid's).
    """
    result = {}
    for k in range(1, len(labels)):
        inside = prediction == k
        n_inside = int(inside.sum())
        scores = volume_scores(sample_overlaps(bits[k - 1].numpy(), n_samples), voxel_ml)
        if input_volumes_ml is not None:
            scores["volume_ml"] = float(input_volumes_ml[k])
        else:
            scores["volume_ml"] = float(n_inside * voxel_ml)
        if n_inside:
            scores["ulabelled"] = float(entropy_map[inside].double().mean())
            scores["segment_entropy"] = float(binary_entropy(mean_p[k][inside]).double().mean())
        else:
            scores["ulabelled"] = scores["segment_entropy"] = None
        result[labels[k]] = {name: scores[name] for name in DEFINITIONS}
    return result


WITHIN = "within the model's usual range"
REVIEW = "review recommended"


def read_score(value, bound: dict) -> dict:
    """Plain-language reading of one score against a model-card bound {"review_above": x} or {"review_below": x}.

    Returns {"reading", "usual_range"}; a missing value (null) reads "not defined".
    """
    if "review_above" in bound:
        limit, outside, usual = bound["review_above"], value is not None and value > bound["review_above"], "<="
    else:
        limit, outside, usual = bound["review_below"], value is not None and value < bound["review_below"], ">="
    reading = "not defined" if value is None else (REVIEW if outside else WITHIN)
    return {"reading": reading, "usual_range": f"{usual} {limit:g}"}


def score_readings(per_class: dict, reference: dict | None) -> dict:
    """Readings per class and score for the scores a model card's ``score_reference`` bounds.

    reference: {"source": text, "classes": {class name: {score: {"review_above"|"review_below": x}}}}.
    """
    bounds = (reference or {}).get("classes", {})
    return {name: {score: read_score(values.get(score), bound) for score, bound in bounds.get(name, {}).items()}
            for name, values in per_class.items()}


def scores_document(per_class: dict, method: str, n_samples: int, reference: dict | None = None) -> dict:
    """The scores.json content: values, each score's definition and direction, and readings against the
    model card's usual ranges where the card gives them."""
    return {
        "method": method,
        "n_samples": n_samples,
        "grid": "model grid (card spacing); volume_ml on the input grid",
        "classes": per_class,
        "definitions": {k: {"definition": d, "direction": r} for k, (d, r) in DEFINITIONS.items()},
        "readings": score_readings(per_class, reference),
        "reference_source": (reference or {}).get("source", "none: the model card gives no usual ranges"),
        "missing_values": "null where undefined: a single sample (no spread) or an empty segment",
    }
