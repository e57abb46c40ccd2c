"""Evaluate ``seguncertainty segment`` outputs against reference segmentations, case by case.

A prediction folder holds one sub-folder per case with the segment command's ``manifest.json``; the
reference for case ``NAME`` is ``REFS/NAME.<ext>`` (a labelmap with the model's label values).
Everything is computed per case and per foreground class, and the dataset summary is built from the
per-case results and summed calibration bins, so memory stays that of one case.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..io.header import describe_grid, read_header, same_grid
from ..io.images import IMAGE_SUFFIXES, image_suffix, read_volume
from .calibration import BinStats, calibration_split
from .cohort_stats import generalized_energy_distance, ood_auroc, score_quality_correlation
from .quality import (
    CONFUSION_EDGES,
    EMPTY_RULES,
    confusion_histograms,
    dice_hd95,
    dilated_foreground_box,
    uncertainty_by_confusion,
)
from .referral import THRESHOLDS, correction_benefit_curve, referral_curve, ue_dice_curve

REFERRAL_MAPS = ("entropy", "mutual_information", "variance")
SUBJECT_SCORES = ("cv", "dpw", "ulabelled", "segment_entropy", "diversity")
FRACTIONS = np.linspace(0, 0.2, 41)  # referral curve: 0-20 % of voxels, in 0.5 % steps
CONVENTIONS = {
    "ece_bins": "10 bins, edges linspace(0, 1 + 1e-8, 11), [a, b), empty bins dropped (paper 001's code)",
    "ue_threshold": "U = u > tau (strict) on the normalized entropy, tau in 0.05..0.95; best tau maximizes "
                    "the mean U-E Dice over cases",
    "bnf": "flagged voxels set to background; a case benefits when its Dice increases",
    "referral": "voxels ranked by decreasing uncertainty; the top fraction is corrected to the reference; "
                "AUC over 0-20 % referred",
    "mask_region": "optional: --masks DIR/<case>.<ext>, non-zero = inside (columns ending in _mask)",
    "box_region": "reference bounding box dilated 8 mm in-plane and 2 slices out of plane (paper 004)",
    "empty_masks": EMPTY_RULES,
    "ood_auroc": "every score oriented so that higher = more uncertain (Dpw negated); ties count one half",
    "confusion_groups": "normalized entropy in TP / FP / FN / TN voxels inside the dilated reference box "
                        "(20 bins over 0-1, counts summed over cases; per-case means in cases.csv)",
    "multi_annotator": "REFS/<case>/ holds one labelmap per annotator; the reference for every other measurement "
                       "is the per-class majority vote (>= half); GED^2 = 2E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')] "
                       "with d = 1 - IoU over all pairs with replacement, from segment --save-samples (paper 002)",
    "calibration_split": "paper 001's code: signed error = unweighted mean over non-empty bins of (fraction "
                         "foreground - mean probability), > 0 under-confident; tolerance = |90th percentile| of the "
                         "methods' pooled signed errors; a case's error is averaged over the methods evaluated "
                         "together (per-method fractions use the same tolerance)",
}


@dataclass
class CaseResult:
    case: str
    label: str
    row: dict
    bins: dict[str, BinStats]
    ue_curve: np.ndarray
    bnf_condition: np.ndarray  # per threshold: the analytic condition holds
    dice_after: np.ndarray  # per threshold: Dice after setting flagged voxels to background
    referral: dict[str, np.ndarray] = field(default_factory=dict)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # entropy histogram per TP/FP/FN/TN


def _array(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = read_volume(path)  # header (geometry, memory) checked before the voxels are read
    return sitk.GetArrayFromImage(image), image


def check_case_grids(case_dir: Path, files: dict[str, Path], seg_image: sitk.Image, reference_path: Path,
                     ref_image: sitk.Image, mask_path: Path | None) -> None:
    """Geometry guard: the reference, the region mask and every image of the case must be on the grid of
    the case's segmentation (size, spacing, origin and direction; io.header.same_grid). Another grid is
    refused with both grids in the message, never scored as if aligned. Only headers are read here."""
    others = [(f"Reference {reference_path}", ref_image)]
    if mask_path is not None:
        others.append((f"Region mask {mask_path}", read_header(mask_path)))
    others += [(f"{path.name} of case '{case_dir.name}'", read_header(path))
               for key, path in files.items() if key != "labelmap" and image_suffix(path) in IMAGE_SUFFIXES]
    for what, grid in others:
        if not same_grid(grid, seg_image):
            raise InputImageError(f"{what} is not on the grid of case '{case_dir.name}': {describe_grid(grid)}; "
                                  f"the case's segmentation has {describe_grid(seg_image)}. Resample it onto the "
                                  "case's grid first (nearest neighbour for labelmaps)")


def find_reference(refs: Path, case: str) -> Path:
    """``REFS/<case>.<ext>``, or the folder ``REFS/<case>/`` holding one labelmap per annotator."""
    if (refs / case).is_dir():
        return refs / case
    for suffix in IMAGE_SUFFIXES:
        if (refs / f"{case}{suffix}").exists():
            return refs / f"{case}{suffix}"
    raise InputImageError(f"No reference segmentation for case '{case}' in {refs}")


MAP_NAMES = (*REFERRAL_MAPS, "expected_entropy")


def plain_manifest(case_dir: Path, labels: dict[int, str] | None = None) -> dict:
    """A manifest for a folder of plain volumes from another tool (no manifest.json).

    Expects ``segmentation.<ext>`` (a labelmap) and optionally ``probability_<label name>.<ext>``,
    ``entropy`` / ``mutual_information`` / ``variance`` / ``expected_entropy.<ext>`` and ``scores.json``
    (any of .nii.gz, .nii, .nrrd, .mha). ``labels`` maps label values to names; by default the values
    found in the segmentation, named ``label<value>``.
    """
    images = {p.name[: -len(image_suffix(p))]: p.name for p in sorted(case_dir.iterdir())
              if image_suffix(p) in IMAGE_SUFFIXES}
    if "segmentation" not in images:
        raise InputImageError(f"{case_dir} has neither manifest.json nor segmentation.<ext>")
    if labels is None:
        values = np.unique(_array(case_dir / images["segmentation"])[0])
        labels = {int(v): f"label{int(v)}" for v in values if v != 0}
    outputs = [{"file": images["segmentation"], "kind": "labelmap"}]
    outputs += [{"file": images[f"probability_{name}"], "kind": "probability", "label": name}
                for name in labels.values() if f"probability_{name}" in images]
    outputs += [{"file": images[m], "kind": "uncertainty", "map": m} for m in MAP_NAMES if m in images]
    if (case_dir / "scores.json").is_file():
        outputs.append({"file": "scores.json", "kind": "scores"})
    return {"labels": {"0": "background", **{str(k): v for k, v in labels.items()}}, "outputs": outputs}


def case_manifest(case_dir: Path, labels: dict[int, str] | None = None) -> dict:
    """The case's manifest.json (from ``segment``), or one built from its plain volumes."""
    path = case_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else plain_manifest(case_dir, labels)


def evaluate_case(case_dir: Path, reference_path: Path, labels: dict[int, str] | None = None,
                  mask_path: Path | None = None) -> list[CaseResult]:
    """Every measurement for one case, one result per foreground class (see case_manifest for inputs).

    mask_path: an optional region mask (non-zero = inside) on the case's grid; calibration is then also
    computed inside it (columns and summary keys ending in ``_mask``).
    """
    manifest = case_manifest(case_dir, labels)
    files = {_file_key(e): case_dir / e["file"] for e in manifest["outputs"]}
    segmentation, seg_image = _array(files["labelmap"])
    annotations, ref_image = read_annotations(reference_path)
    reference = annotations[0] if len(annotations) == 1 else None
    check_case_grids(case_dir, files, seg_image, reference_path, ref_image, mask_path)
    spacing = tuple(reversed(seg_image.GetSpacing()))  # (z, y, x)
    mask = None
    if mask_path is not None:
        mask = _array(mask_path)[0] != 0
    scores = json.loads(files["scores"].read_text())["classes"] if "scores" in files else {}
    maps = {name: _array(files[name])[0] for name in REFERRAL_MAPS if name in files}
    results = []
    for value, label in manifest["labels"].items():
        if int(value) == 0:
            continue
        pred = segmentation == int(value)
        raters = [a == int(value) for a in annotations] if reference is None else None
        votes = np.mean(raters, axis=0) if raters else None
        ref = reference == int(value) if reference is not None else votes >= 0.5
        prob = np.clip(_array(files[label])[0], 0, 1) if label in files else pred.astype(np.float64)
        box = dilated_foreground_box(ref, spacing)
        bins = {"volume": BinStats.from_arrays(prob, ref), "box": BinStats.from_arrays(prob, ref, box)}
        if mask is not None:
            bins["mask"] = BinStats.from_arrays(prob, ref, mask)
        row = {"case": case_dir.name, "label": label, **dice_hd95(pred, ref, spacing),
               "reference_ml": float(ref.sum() * math.prod(spacing) / 1000),
               "predicted_ml": float(pred.sum() * math.prod(spacing) / 1000)}
        for region, stats in bins.items():
            row |= {f"{k}_{region}": v for k, v in stats.summary().items() if k != "voxels"}
        row["signed_calibration_error"] = bins["volume"].signed_error()
        row |= {s: scores.get(label, {}).get(s) for s in SUBJECT_SCORES}
        entropy = maps.get("entropy", np.zeros(pred.shape))
        if votes is not None:
            row |= multi_annotator_row(votes, raters, entropy, box, files.get(f"samples:{label}"))
        row |= {f"entropy_mean_{group}_box": v["mean"]
                for group, v in uncertainty_by_confusion(entropy, pred, ref, box).items()}
        bnf = correction_benefit_curve(entropy, pred, ref)
        result = CaseResult(case_dir.name, label, row, bins, ue_dice_curve(entropy, pred, ref),
                            bnf["benefits"], bnf["dice_after"], confusion=confusion_histograms(entropy, pred, ref, box))
        for name, u in maps.items():
            curve = referral_curve(u, pred, ref, FRACTIONS)
            result.referral[name] = curve["dice"]
            row[f"referral_auc_{name}"] = curve["auc"] / (FRACTIONS[-1] - FRACTIONS[0])
        results.append(result)
    return results


def _file_key(entry: dict) -> str:
    if entry["kind"] == "samples":
        return f"samples:{entry['label']}"
    return entry.get("map") or entry.get("label") or entry["kind"]


def read_annotations(reference_path: Path) -> tuple[list[np.ndarray], sitk.Image]:
    """One labelmap, or every labelmap in a folder (one per annotator, same grid); returns arrays and geometry."""
    paths = sorted(p for p in reference_path.iterdir() if image_suffix(p) in IMAGE_SUFFIXES) \
        if reference_path.is_dir() else [reference_path]
    if not paths:
        raise InputImageError(f"No annotator labelmaps in {reference_path}")
    arrays, image = [], None
    for path in paths:
        array, image_i = _array(path)
        if image is not None and not same_grid(image_i, image):
            raise InputImageError(f"Annotation {path} is not on the grid of {paths[0]}: {describe_grid(image_i)} "
                                  f"vs {describe_grid(image)}")
        arrays.append(array)
        image = image or image_i
    return arrays, image


def multi_annotator_row(votes: np.ndarray, annotator_masks: list[np.ndarray], entropy: np.ndarray,
                        box: np.ndarray, samples_file: Path | None) -> dict:
    """Paper 002 with several annotators: GED between the model's samples and the annotations (1 - IoU),
    its terms, and the voxel correlation of the model's entropy with the annotators' vote entropy (box)."""
    row: dict = {"annotators": len(annotator_masks)}
    p = votes[box]
    vote_entropy = -(np.where(p > 0, p * np.log2(np.maximum(p, 1e-12)), 0)
                     + np.where(p < 1, (1 - p) * np.log2(np.maximum(1 - p, 1e-12)), 0))
    u = entropy[box]
    defined = u.std() > 0 and vote_entropy.std() > 0
    row["entropy_vs_vote_entropy_r"] = float(np.corrcoef(u, vote_entropy)[0, 1]) if defined else math.nan
    if samples_file is not None and samples_file.is_file():
        with np.load(samples_file) as data:
            bits, n = data["bits"], int(data["n_samples"])
        samples = [((bits[t // 8] >> (t % 8)) & 1).astype(bool) for t in range(n)]
        row |= generalized_energy_distance(samples, annotator_masks)
    else:
        disagreement = generalized_energy_distance(annotator_masks[:1], annotator_masks)["annotator_disagreement"]
        row |= {"ged2": math.nan, "cross": math.nan, "sample_diversity": math.nan,
                "annotator_disagreement": disagreement}
    return row


def pooled_signed_error(results: list[CaseResult]) -> float:
    return sum((r.bins["volume"] for r in results), BinStats.empty()).signed_error()


def add_calibration_split(summaries: dict[str, dict], rows: list[dict]) -> None:
    """Paper 001's under/over/well-calibrated subject fractions over all methods evaluated together, added to
    each class block as ``calibration_split`` (dataset level) and per-method fractions (same tolerance)."""
    labels = {label for s in summaries.values() for label in s["classes"]}
    for label in labels:
        methods = [m for m, s in summaries.items() if label in s["classes"]]
        pooled = [summaries[m]["classes"][label]["pooled_signed_calibration_error"] for m in methods]
        by_case: dict[str, dict[str, float]] = {}
        for row in rows:
            if row["label"] == label:
                by_case.setdefault(row["case"], {})[row["method"]] = row["signed_calibration_error"]
        table = np.array([[errors.get(m, np.nan) for m in methods] for errors in by_case.values()])
        split = calibration_split(pooled, table)
        for j, method in enumerate(methods):
            own = calibration_split(pooled, table[:, j:j + 1])
            block = summaries[method]["classes"][label]
            block["calibration_split"] = split
            block |= {f"{k}_fraction": own[k] for k in ("underconfident", "overconfident", "calibrated")}


def _score_column(rows: list[dict], score: str) -> np.ndarray:
    return np.array([np.nan if row[score] is None else row[score] for row in rows], dtype=float)


def summarize(results: list[CaseResult], ood: set[str] | None = None) -> dict:
    """Dataset summary per foreground class; adds the BnF columns at the best threshold to each row."""
    summary: dict = {"conventions": CONVENTIONS, "classes": {}}
    for label in sorted({r.label for r in results}):
        mine = [r for r in results if r.label == label]
        rows = [r.row for r in mine]
        ue = np.mean([r.ue_curve for r in mine], axis=0)
        best = int(np.argmax(ue))
        tau = float(THRESHOLDS[best])
        for r in mine:
            r.row["bnf_condition"] = bool(r.bnf_condition[best])
            r.row["dice_after_correction"] = float(r.dice_after[best])
            r.row["bnf_benefits"] = bool(r.dice_after[best] > r.row["dice"])
        benefit = [r.row["bnf_benefits"] for r in mine]
        regions = [region for region in ("volume", "box", "mask") if all(region in r.bins for r in mine)]
        pooled = {region: sum((r.bins[region] for r in mine), BinStats.empty()) for region in regions}
        block = {
            "cases": len(mine),
            "dice_mean": float(np.mean([x["dice"] for x in rows])),
            "hd95_mm_mean": float(np.nanmean([x["hd95_mm"] for x in rows])) if any(
                np.isfinite(x["hd95_mm"]) for x in rows) else math.nan,
            "ue_dice_curve": {f"{t:.2f}": float(v) for t, v in zip(THRESHOLDS, ue, strict=True)},
            "ue_best_threshold": tau, "ue_dice_best": float(ue[best]),
            "bnf_fraction": float(np.mean(benefit)),
            "pooled_signed_calibration_error": pooled_signed_error(mine),
            "referral_fractions": FRACTIONS.tolist(),
            "referral_dice_mean": {m: np.mean([r.referral[m] for r in mine], axis=0).tolist()
                                   for m in REFERRAL_MAPS if all(m in r.referral for r in mine)},
        }
        for region, stats in pooled.items():
            block[f"ece_mean_{region}"] = float(np.nanmean([x[f"ece_{region}"] for x in rows]))
            block[f"ece_pooled_{region}"] = stats.ece()
            block[f"reliability_{region}"] = {k: v.tolist() for k, v in stats.reliability().items()}
            for k in ("mce", "nll", "brier"):
                block[f"{k}_mean_{region}"] = float(np.nanmean([x[f"{k}_{region}"] for x in rows]))
        counts = {g: np.sum([r.confusion[g] for r in mine], axis=0) for g in ("TP", "FP", "FN", "TN")}
        block["entropy_by_confusion_box"] = {"edges": CONFUSION_EDGES.tolist(),
                                             **{g: c.tolist() for g, c in counts.items()}}
        dice = np.array([x["dice"] for x in rows])
        block["per_case"] = {"case": [x["case"] for x in rows], "dice": dice.tolist(),
                             **{s: _score_column(rows, s).tolist() for s in SUBJECT_SCORES}}
        if any("annotators" in x for x in rows):
            disagreement = _score_column(rows, "annotator_disagreement")
            ged2 = _score_column(rows, "ged2")
            block["ged2_mean"] = float(np.nanmean(ged2)) if np.isfinite(ged2).any() else math.nan
            block["annotator_disagreement_mean"] = float(np.nanmean(disagreement))
            voxel_r = _score_column(rows, "entropy_vs_vote_entropy_r")
            block["entropy_vs_vote_entropy_r_mean"] = float(np.nanmean(voxel_r))
            block["scores_vs_disagreement"] = {s: score_quality_correlation(_score_column(rows, s), disagreement)
                                               for s in SUBJECT_SCORES}
        block["score_vs_dice"] = {s: score_quality_correlation(_score_column(rows, s), dice) for s in SUBJECT_SCORES}
        if ood:
            flags = np.array([x["case"] in ood for x in rows])
            block["ood_auroc"] = {s: ood_auroc(_score_column(rows, s) * (-1 if s == "dpw" else 1), flags)
                                  for s in SUBJECT_SCORES}
        summary["classes"][label] = block
    return summary
