"""Subject-level uncertainty scores, without ground truth, per foreground class: the one definition of
each score, its name and its convention (everything else imports ``SUBJECT_SCORES`` / ``DEFINITIONS``).

Computed on the model grid from the per-sample segmentations (bits) and the stitched maps:
- cv: coefficient of variation std/mean (ddof=1) of the segmented volume over samples (Hoebel et al. 2019,
  after Roy et al. 2018);
- dpw: mean Dice over all pairs of distinct samples (1 for a pair of empty masks) (Hoebel et al. 2019);
- ulabelled: mean over the predicted segment of the voxel uncertainty U(x) = E_t[H(p_t(x))], the mean over
  samples of each sample's multi-class entropy, in nats (Hoebel et al. 2019's definition);
- segment_entropy: mean over the predicted segment of the one-vs-rest binary entropy of the mean
  probability, in nats (Mehrtash et al. 2020, eq. 7);
- volume_ml: median of the per-sample segmented volumes, with volume_ml_interval95 their 2.5-97.5
  percentiles: estimate and interval from the same samples, grid and rule, so the estimate always lies
  inside its interval (for one sample both are that sample's volume);
- diversity: E[1 - IoU(s, s')] over all T^2 ordered sample pairs, drawn with replacement (the last term of
  the generalized energy distance of Czolbe et al. 2021; 0 when all samples agree). Its T self-pairs count
  0, so it is (T - 1) / T times diversity_distinct and grows with T: compare it only at equal T;
- diversity_distinct: mean 1 - IoU over the T (T - 1) ordered pairs of distinct samples, an unbiased
  estimate (U-statistic) of E[1 - IoU(s, s')] for two independent samples, whose expectation does not
  depend on T: the form to compare across runs with different T;
- segmentation_volume_ml: volume of the delivered labelmap on the input grid (information only);
- empty_prediction: true when the delivered segmentation has no voxel of the class (segmentation_volume_ml
  = 0). A missed structure otherwise reads as certain (all samples empty: dpw 1, diversity 0; cv,
  ulabelled and segment_entropy null), so the flag reads "no segmentation: review" whatever the card says.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..core.errors import CancelledError
from .maps import binary_entropy


def _check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise CancelledError()

PAPERS = {
    "hoebel2019": "Hoebel et al., Give me (un)certainty - An exploration of parameters that affect segmentation "
                  "uncertainty, 2019",
    "jungo2019": "Jungo and Reyes, Assessing Reliability and Challenges of Uncertainty Estimations for Medical "
                 "Image Segmentation, MICCAI 2019",
    "czolbe2021": "Czolbe et al., Is segmentation uncertainty useful?, IPMI 2021",
    "sander2019": "Sander et al., Towards increased trustworthiness of deep learning segmentation methods on "
                  "cardiac MRI, SPIE Medical Imaging 2019",
    "mehrtash2020": "Mehrtash et al., Confidence Calibration and Predictive Uncertainty Estimation for Deep Medical "
                    "Image Segmentation, IEEE TMI 2020",
}

DEFINITIONS = {
    "cv": ("Coefficient of variation of the segmented volume over samples (std / mean, ddof=1; "
           f"{PAPERS['hoebel2019']})", "higher = more uncertain"),
    "dpw": (f"Mean Dice between all pairs of distinct samples ({PAPERS['hoebel2019']})", "lower = more uncertain"),
    "ulabelled": ("Mean over the predicted segment of E_t[H(p_t)], each sample's multi-class entropy averaged "
                  f"over samples, nats (0 to ln C) ({PAPERS['hoebel2019']})", "higher = more uncertain"),
    "segment_entropy": ("Mean over the predicted segment of the binary (class vs rest) entropy of the mean "
                        f"probability, nats (0 to ln 2) ({PAPERS['mehrtash2020']}, eq. 7)",
                        "higher = more uncertain"),
    "diversity": ("Sample diversity: mean 1 - IoU over all T^2 sample pairs drawn with replacement "
                  f"(last term of the generalized energy distance, {PAPERS['czolbe2021']}); the T self-pairs "
                  "count 0, so it grows with T: = (T - 1) / T x diversity_distinct; compare only at equal T",
                  "higher = more uncertain"),
    "diversity_distinct": ("Mean 1 - IoU over pairs of distinct samples: an unbiased estimate of E[1 - IoU] of two "
                           "independent samples, comparable across runs with different T", "higher = more uncertain"),
    "volume_ml": ("Median of the per-sample segmented volumes on the model grid, mL", "information"),
    "volume_ml_interval95": ("2.5 and 97.5 percentiles of the same per-sample volumes (same grid), mL",
                             "wider = more uncertain"),
    "segmentation_volume_ml": ("Volume of the delivered segmentation (argmax of the mean probability) on the "
                               "input grid, mL", "information"),
    "empty_prediction": ("True when the delivered segmentation has no voxel of the class (segmentation_volume_ml "
                         "= 0): a missed structure, which the other scores would read as certain",
                         "true = review"),
}
SUBJECT_SCORES = ("cv", "dpw", "ulabelled", "segment_entropy", "diversity")  # the scalar uncertainty scores
LOWER_IS_UNCERTAIN = frozenset(k for k in SUBJECT_SCORES if DEFINITIONS[k][1].startswith("lower"))


def certain_value(score: str) -> float:
    """A score's value when every sample agrees and has zero entropy: 1 for dpw, 0 for the others."""
    return 1.0 if score in LOWER_IS_UNCERTAIN else 0.0


def score_range(score: str, n_classes: int) -> tuple[float, float]:
    """The values a subject score can take: dpw and diversity 0-1; ulabelled in nats, 0 to ln C (C classes
    with the background); segment_entropy a binary entropy in nats, 0 to ln 2; cv 0 up (unbounded)."""
    return {"cv": (0.0, math.inf), "dpw": (0.0, 1.0), "diversity": (0.0, 1.0),
            "ulabelled": (0.0, math.log(n_classes)), "segment_entropy": (0.0, math.log(2))}[score]
SCORE_CONVENTIONS = {
    "grid": "scores on the model grid (the card's spacing); segmentation_volume_ml on the input grid",
    "entropy_unit": "nats (natural logarithm) for ulabelled and segment_entropy; the voxel maps are normalized "
                    "by ln C to 0-1 (multiply by ln C for nats)",
    "ulabelled": "E_t[H(p_t)] (mean of each sample's entropy), not H(E_t p), inside the segment predicted "
                 "by the mean probability",
    "pairs": "dpw and diversity_distinct over distinct pairs; diversity over all ordered pairs with replacement "
             "(self-pairs included, so it grows with T)",
    "volume": "median and 2.5/97.5 percentiles (numpy linear interpolation) of the T per-sample volumes",
    "missing_values": "null where undefined: a single sample (no spread) or an empty segment",
    "empty_prediction": "a class whose delivered segmentation is empty is flagged (empty_prediction true) and "
                        "reads 'no segmentation: review'; cohort worklists rank it first; evaluate's score "
                        "statistics count it as the most uncertain case: each of its scores takes the most "
                        "uncertain value the class's non-empty cases reach (the maximum, the minimum for dpw)",
}
NO_SEGMENTATION = "no segmentation: review"


def uncertain_side(score: str, values: np.ndarray) -> np.ndarray:
    """Values oriented so that higher = more uncertain (dpw negated)."""
    return -np.asarray(values, dtype=float) if score in LOWER_IS_UNCERTAIN else np.asarray(values, dtype=float)


def sample_overlaps(bits: np.ndarray, n_samples: int, chunk: int = 1 << 20,
                    cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """Intersection counts between every pair of samples: (T, T) int64, diagonal = sample sizes.

    bits: (ceil(T/8), ...) uint8 as produced by the sliding window for one class. ``cancelled`` is polled
    before each chunk of ``chunk`` voxels (CancelledError).
    """
    flat = bits.reshape(bits.shape[0], -1)
    _check(cancelled)
    inter = np.zeros((n_samples, n_samples), dtype=np.float64)
    for start in range(0, flat.shape[1], chunk):
        _check(cancelled)
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


def sample_diversity(inter: np.ndarray, distinct: bool = False) -> float:
    """Mean 1 - IoU over the ordered pairs of the (T, T) intersection counts: all T^2 (with replacement), or
    the T (T - 1) of distinct samples (T >= 2)."""
    distance = 1.0 - pairwise_iou(inter)
    t = inter.shape[0]
    return float(distance.sum() / (t * (t - 1))) if distinct else float(distance.mean())


def volume_scores(inter: np.ndarray, voxel_ml: float) -> dict:
    """cv, dpw, diversity (both forms) and the volume estimate with its interval from the (T, T) intersection counts."""
    t = inter.shape[0]
    volumes = np.diag(inter) * voxel_ml
    median, low, high = np.percentile(volumes, [50.0, 2.5, 97.5])
    out: dict = {"volume_ml": float(median), "volume_ml_interval95": [float(low), float(high)]}
    if t < 2:
        out.update(cv=None, dpw=None, diversity=None, diversity_distinct=None)
        return out
    mean = volumes.mean()
    out["cv"] = float(volumes.std(ddof=1) / mean) if mean > 0 else None
    upper = np.triu_indices(t, k=1)
    out["dpw"] = float(pairwise_dice(inter)[upper].mean())
    out["diversity"] = sample_diversity(inter)
    out["diversity_distinct"] = sample_diversity(inter, distinct=True)
    return out


def subject_scores(
    bits: torch.Tensor,
    mean_p: torch.Tensor | list,
    expected_entropy: torch.Tensor,
    prediction: torch.Tensor,
    voxel_ml: float,
    n_samples: int,
    labels: dict[int, str],
    input_volumes_ml: dict[int, float] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, dict]:
    """Scores per foreground class name; ``cancelled`` is polled about every million voxels (CancelledError).

    bits: (C-1, ceil(T/8), *S) uint8; mean_p: (C, *S), or a list of C (*S) tensors (entry 0 unused);
    expected_entropy: (*S) the E_t[H(p_t)] / ln C map; prediction: (*S) labels, all on the model grid.
    input_volumes_ml: volume of each class in the delivered input-grid labelmap (else the model grid's).
    """
    nats = math.log(len(mean_p))
    result = {}
    planes = max(1, (1 << 20) // max(1, math.prod(prediction.shape[1:])))  # about 1 M voxels at a time
    for k in range(1, len(labels)):
        n_inside, sum_h, sum_binary = 0, 0.0, 0.0
        for z in range(0, prediction.shape[0], planes):
            _check(cancelled)
            zs = slice(z, z + planes)
            inside = prediction[zs] == k
            n_inside += int(inside.sum())
            sum_h += float(expected_entropy[zs][inside].double().sum())
            sum_binary += float(binary_entropy(mean_p[k][zs][inside]).double().sum())
        scores = volume_scores(sample_overlaps(bits[k - 1].numpy(), n_samples, cancelled=cancelled), voxel_ml)
        scores["segmentation_volume_ml"] = float(input_volumes_ml[k] if input_volumes_ml is not None
                                                 else n_inside * voxel_ml)
        if n_inside:
            scores["ulabelled"] = sum_h / n_inside * nats
            scores["segment_entropy"] = sum_binary / n_inside
        else:
            scores["ulabelled"] = scores["segment_entropy"] = None
        scores["empty_prediction"] = scores["segmentation_volume_ml"] == 0
        result[labels[k]] = {name: scores[name] for name in DEFINITIONS}
    return result


WITHIN = "within the model's usual range"
REVIEW = "review recommended"
NO_RANGE = "no usual range for this method"


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
    An empty prediction (``empty_prediction`` true) adds {"empty_prediction": {"reading": NO_SEGMENTATION,
    "usual_range": "a non-empty segmentation"}} to its class, with or without a card.
    """
    bounds = (reference or {}).get("classes", {})
    readings = {name: {score: read_score(values.get(score), bound) for score, bound in bounds.get(name, {}).items()}
                for name, values in per_class.items()}
    for name, values in per_class.items():
        if values.get("empty_prediction"):
            readings[name]["empty_prediction"] = {"reading": NO_SEGMENTATION, "usual_range": "a non-empty segmentation"}
    return readings


def measured_with(reference: dict) -> str:
    """``"ensemble+mc_dropout, 15 samples"``: the method and total sample count a usual range was measured with."""
    method, n = reference.get("method"), reference.get("n_samples")
    if method is None or n is None:
        return "an unrecorded method"
    return f"{method}, {n} sample{'s' if n != 1 else ''}"


def reference_applies(reference: dict | None, method: str, n_samples: int) -> bool:
    """Whether a ``score_reference`` holds for a run: the scores' spread depends on the method and the number
    of samples, so a usual range applies only to the ``method`` and total ``n_samples`` it records."""
    return bool(reference) and reference.get("method") == method and reference.get("n_samples") == n_samples


def scores_document(per_class: dict, method: str, n_samples: int, reference: dict | None = None) -> dict:
    """The scores.json content: values, each score's definition and direction, and readings against the
    model card's usual ranges where the card gives them for this run's method and sample count (else each
    bounded score reads "no usual range for this method")."""
    readings = score_readings(per_class, reference)
    source = (reference or {}).get("source", "none: the model card gives no usual ranges")
    if reference and not reference_applies(reference, method, n_samples):
        readings = {name: {score: {"reading": NO_RANGE,
                                   "usual_range": f"{r['usual_range']} with {measured_with(reference)}"}
                           for score, r in scores.items()} for name, scores in readings.items()}
        source = (f"not applied: the usual ranges were measured with {measured_with(reference)}, this run used "
                  f"{method}, {n_samples} sample{'s' if n_samples != 1 else ''} ({source})")
    return {
        "method": method,
        "n_samples": n_samples,
        "grid": SCORE_CONVENTIONS["grid"],
        "classes": per_class,
        "definitions": {k: {"definition": d, "direction": r} for k, (d, r) in DEFINITIONS.items()},
        "conventions": SCORE_CONVENTIONS,
        "papers": PAPERS,
        "readings": readings,
        "reference_source": source,
        "reference_measured_with": measured_with(reference) if reference else None,
        # the bounds the readings used; calibration/apply.py replaces them by a calibration's
        "usual_ranges": ({**reference, "from": "model card"} if reference_applies(reference, method, n_samples)
                         else {"from": "none"}),
        "missing_values": SCORE_CONVENTIONS["missing_values"],
    }
