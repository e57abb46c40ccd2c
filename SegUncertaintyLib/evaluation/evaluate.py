"""Evaluate ``seguncertainty segment`` outputs against reference segmentations, case by case.

A prediction folder holds one sub-folder per case (case_folder.py: its manifest, files and reference).
Everything is computed per case and per foreground class, and the dataset summary is built from the
per-case results and summed calibration bins, so memory stays that of one case.

Out-of-distribution cases (``--ood``) need no reference: only their subject scores are read, and they
are reported on their own (AUROC per score); they never enter calibration, threshold selection,
correlations or the figures. An in-distribution case without a reference is skipped with a note.
Failure detection and calibrated decisions: decisions.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError
from ..inference.scores import PAPERS, SUBJECT_SCORES, uncertain_side
from .calibration import BinStats, calibration_split
from .case_folder import (
    case_folders,
    case_manifest,
    check_case_grids,
    file_key,
    find_reference_named,
    ood_case_scores,
    read_annotations,
    read_array,
    read_samples,
    readable,
    reference_names,
    score_classes,
)
from .cohort_stats import STATISTICS, generalized_energy_distance, ood_detection, score_quality_correlation
from .decisions import (
    FAILURE_DICE,
    calibrated_decisions,
    decision_summary,
    empty_as_most_uncertain,
    empty_prediction,
    failure_table,
    score_column,
)
from .quality import (
    CONFUSION_EDGES,
    EMPTY_RULES,
    confusion_histograms,
    dice_hd95,
    dilated_foreground_box,
    uncertainty_by_confusion,
)
from .referral import (
    REFERRAL_THRESHOLDS,
    THRESHOLDS,
    correction_benefit_curve,
    referral_curve,
    threshold_referral,
    ue_dice_curve,
)
from .temperature_fit import BEFORE_AFTER, before_temperature_columns

REFERRAL_MAPS = ("entropy", "mutual_information", "variance")
FRACTIONS = np.linspace(0, 0.2, 41)  # referral curve: 0-20 % of voxels, in 0.5 % steps
# short citations; the full titles are in PAPERS (summary "papers", the report's Papers section)
JUNGO, SANDER = "Jungo and Reyes 2019", "Sander et al. 2019"
MEHRTASH, CZOLBE = "Mehrtash et al. 2020", "Czolbe et al. 2021"
EVALUATION_CONVENTIONS = {
    "ece_bins": f"foreground-probability ECE (columns ece_volume, ece_box, ece_mask; {JUNGO}, their public code): "
                "10 bins, edges linspace(0, 1 + 1e-8, 11), [a, b), empty bins dropped; binary NLL and Brier",
    "ece_top_label": f"top-label ECE ({MEHRTASH}, eq. 5; columns *_toplabel_*): confidence = probability of the "
                     "predicted class, accuracy = predicted class equals the reference class, 10 bins "
                     "((m-1)/M, m/M]; multi-class NLL (eq. 3) and Brier averaged over the classes (eq. 4); "
                     "computed over all classes of a case (background = 1 - sum of the foreground "
                     "probabilities), so every class row of a case shows the same value",
    "ue_threshold": f"U = u > tau (strict) on the normalized entropy, tau in 0.05..0.95; best tau maximizes "
                    f"the mean U-E Dice over cases ({JUNGO})",
    "bnf": f"{JUNGO}: flagged voxels (u > tau) set to background; a case benefits when FPU TP > TPU (TP + FP + FN) "
           "(exactly when its Dice increases); BnF = fraction of cases that benefit, read at its own best "
           "threshold (bnf_best_threshold), as the authors did for each metric; bnf_fraction_at_ue_threshold "
           "gives the value at the U-E threshold",
    "referral": "fixed fraction per case: voxels ranked by decreasing uncertainty, the top fraction corrected to "
                "the reference, AUC over 0-20 % referred",
    "referral_threshold": f"{SANDER}: one threshold tau for every case, voxels with u > tau corrected to the "
                          "reference; x = mean over cases of the % of voxels referred, y = mean Dice",
    "mask_region": "optional: --masks DIR/<case>.<ext>, non-zero = inside (columns ending in _mask)",
    "box_region": f"reference bounding box dilated 8 mm in-plane and 2 slices out of plane ({MEHRTASH}); for "
                  "the top-label columns the box of all foreground classes together",
    "empty_masks": EMPTY_RULES,
    "ood": "out-of-distribution cases (--ood) need no reference and are kept apart: AUROC of each score "
           "(oriented so that higher = more uncertain, dpw negated; ties count one half) for OOD against the "
           "evaluated in-distribution cases; never in calibration, thresholds, correlations or figures",
    "statistics": STATISTICS["p_values"] + "; " + STATISTICS["intervals"],
    "failure_detection": f"risk = 1 - Dice; AURC = mean over coverages k/n of the mean risk of the k least "
                         f"uncertain cases (ties averaged), E-AURC = AURC - AURC of the ordering by risk, random "
                         f"AURC = mean risk; failure AUROC for Dice < {FAILURE_DICE}; empty predictions as the most "
                         f"uncertain cases; the predicted Dice (calibrated runs) ranks low predicted Dice first",
    "missed_error_fraction": "calibrated runs: the fraction of a case's error voxels (prediction != reference, any "
                             "class) with map value below the run's threshold; its expectation over cases "
                             "exchangeable with the calibration cases is at most alpha (marginal, not per case)",
    "diversity": f"the subject score 'diversity' is scores.json's value (model grid); GED's sample term "
                 f"(ged_sample_diversity) is the same definition on the saved samples on the reference grid "
                 f"({CZOLBE})",
    "confusion_groups": f"normalized entropy in TP / FP / FN / TN voxels inside the dilated reference box "
                        f"(20 bins over 0-1, counts summed over cases; per-case means in cases.csv; {CZOLBE})",
    "multi_annotator": "REFS/<case>/ holds one labelmap per annotator; the reference for every other measurement "
                       "is the per-class majority vote (>= half); GED^2 = 2E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')] "
                       f"with d = 1 - IoU over all pairs with replacement, from segment --save-samples ({CZOLBE})",
    "calibration_split": f"{JUNGO}, their code: signed error = unweighted mean over non-empty bins of (fraction "
                         "foreground - mean probability), > 0 under-confident; tolerance = |90th percentile| of the "
                         "methods' pooled signed errors; a case's error is averaged over the methods evaluated "
                         "together (per-method fractions use the same tolerance)",
    "temperature": BEFORE_AFTER,
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
    threshold_referral: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # per map: fraction, dice
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # entropy histogram per TP/FP/FN/TN


def evaluate_case(case_dir: Path, reference_path: Path, labels: dict[int, str] | None = None,
                  mask_path: Path | None = None) -> list[CaseResult]:
    """Every measurement for one case, one result per foreground class (see case_manifest for inputs).

    mask_path: an optional region mask (non-zero = inside) on the case's grid; calibration is then also
    computed inside it (columns and summary keys ending in ``_mask``).
    """
    manifest = case_manifest(case_dir, labels)
    files = {file_key(e): case_dir / e["file"] for e in manifest["outputs"]}
    segmentation, seg_image = read_array(files["labelmap"])
    annotations, ref_image = read_annotations(reference_path)
    reference = annotations[0] if len(annotations) == 1 else None
    check_case_grids(case_dir, files, seg_image, reference_path, ref_image, mask_path)
    spacing = tuple(reversed(seg_image.GetSpacing()))  # (z, y, x)
    mask = None
    if mask_path is not None:
        mask = read_array(mask_path)[0] != 0
    scores = score_classes(files["scores"]) if "scores" in files else {}
    decisions = calibrated_decisions(files, segmentation, reference)
    maps = {name: read_array(files[name])[0] for name in REFERRAL_MAPS if name in files}
    classes = [(int(v), name) for v, name in manifest["labels"].items() if int(v) != 0]
    probs = {name: (np.clip(read_array(files[name])[0], 0, 1) if name in files
                    else (segmentation == v).astype(np.float64)) for v, name in classes}
    refs = {name: (reference == v if reference is not None else np.mean([a == v for a in annotations], 0) >= 0.5)
            for v, name in classes}
    top_label = top_label_bins(probs, refs, spacing)
    temperature = before_temperature_columns(manifest, *top_label_arrays(probs, refs, spacing))
    results = []
    for value, label in classes:
        pred = segmentation == value
        raters = [a == value for a in annotations] if reference is None else None
        votes = np.mean(raters, axis=0) if raters else None
        ref, prob = refs[label], probs[label]
        box = dilated_foreground_box(ref, spacing)
        bins = {"volume": BinStats.from_arrays(prob, ref), "box": BinStats.from_arrays(prob, ref, box), **top_label}
        if mask is not None:
            bins["mask"] = BinStats.from_arrays(prob, ref, mask)
        row = {"case": readable(case_dir.name), "label": label, **dice_hd95(pred, ref, spacing),
               "reference_ml": float(ref.sum() * math.prod(spacing) / 1000),
               "predicted_ml": float(pred.sum() * math.prod(spacing) / 1000)}
        for region, stats in bins.items():
            row |= {f"{k}_{region}": v for k, v in stats.summary().items() if k != "voxels"}
        row["signed_calibration_error"] = bins["volume"].signed_error()
        row |= temperature
        row |= {s: scores.get(label, {}).get(s) for s in SUBJECT_SCORES}
        row["empty_prediction"] = empty_prediction(scores.get(label, {}), row["predicted_ml"])
        predicted = scores.get(label, {}).get("predicted_dice") or {}
        row |= {**decisions, "predicted_dice": predicted.get("value"),
                "predicted_dice_low": (predicted.get("interval") or [None, None])[0],
                "predicted_dice_high": (predicted.get("interval") or [None, None])[1],
                "predicted_dice_nominal_coverage": predicted.get("coverage")}
        entropy = maps.get("entropy")
        if entropy is None:  # left out by segment --maps: the entropy-based values are n/a (NaN), not zeros
            missing = np.full(len(THRESHOLDS), np.nan)
            result = CaseResult(row["case"], label, row, bins, missing, missing, missing)
        else:
            if votes is not None:
                row |= multi_annotator_row(votes, raters, entropy, box, files.get(f"samples:{label}"))
            row |= {f"entropy_mean_{group}_box": v["mean"]
                    for group, v in uncertainty_by_confusion(entropy, pred, ref, box).items()}
            bnf = correction_benefit_curve(entropy, pred, ref)
            result = CaseResult(row["case"], label, row, bins, ue_dice_curve(entropy, pred, ref), bnf["benefits"],
                                bnf["dice_after"], confusion=confusion_histograms(entropy, pred, ref, box))
        for name, u in maps.items():
            curve = referral_curve(u, pred, ref, FRACTIONS)
            result.referral[name] = curve["dice"]
            row[f"referral_auc_{name}"] = curve["auc"] / (FRACTIONS[-1] - FRACTIONS[0])
            result.threshold_referral[name] = threshold_referral(u, pred, ref)
        results.append(result)
    return results


def top_label_arrays(probs: dict[str, np.ndarray], refs: dict[str, np.ndarray], spacing: tuple[float, float, float]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, *S) probabilities of every class (background = 1 - the others), (*S) reference class indices and
    the dilated box of all foreground references."""
    foreground = np.stack(list(probs.values()))
    background = np.clip(1.0 - foreground.sum(0), 0.0, 1.0)
    everything = np.concatenate([background[None], foreground])
    everything /= np.maximum(everything.sum(0, keepdims=True), 1e-12)  # rounding in stored probabilities
    label = np.zeros(background.shape, np.int64)
    for index, ref in enumerate(refs.values(), start=1):
        label[ref] = index
    return everything, label, dilated_foreground_box(label > 0, spacing)


def top_label_bins(probs: dict[str, np.ndarray], refs: dict[str, np.ndarray],
                   spacing: tuple[float, float, float]) -> dict[str, BinStats]:
    """Mehrtash et al. 2020's top-label statistics over all classes of one case, in the whole volume and in
    the dilated box of all foreground references. probs/refs: per foreground class, in label order."""
    everything, label, box = top_label_arrays(probs, refs, spacing)
    return {"toplabel_volume": BinStats.top_label(everything, label),
            "toplabel_box": BinStats.top_label(everything, label, box)}


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
        samples = read_samples(samples_file, votes.shape)
        row |= generalized_energy_distance(samples, annotator_masks)
    else:
        disagreement = generalized_energy_distance(annotator_masks[:1], annotator_masks)["annotator_disagreement"]
        row |= {"ged2": math.nan, "cross": math.nan, "ged_sample_diversity": math.nan,
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


PER_CASE_COLUMNS = ("dice", "hd95_mm", "ece_volume", "ece_toplabel_volume", "reference_ml", "predicted_ml")


def summarize(results: list[CaseResult], ood_scores: dict[str, dict] | None = None,
              notes: list[str] | None = None) -> dict:
    """Dataset summary per foreground class from the in-distribution results; adds the BnF columns at BnF's
    best threshold to each row. ood_scores: {case: {class: {score: value}}} from the OOD cases' scores.json,
    reported apart (``ood`` block)."""
    summary: dict = {"conventions": EVALUATION_CONVENTIONS, "papers": PAPERS, "notes": list(notes or []), "classes": {}}
    ood_scores = ood_scores or {}
    for label in sorted({r.label for r in results}):
        mine = [r for r in results if r.label == label]
        rows = [r.row for r in mine]
        ue = np.mean([r.ue_curve for r in mine], axis=0)
        best = int(np.argmax(ue))
        bnf_curve = np.mean([r.bnf_condition for r in mine], axis=0)
        best_bnf = int(np.argmax(bnf_curve))
        for r in mine:
            known = not np.isnan(r.bnf_condition[best_bnf])
            r.row["bnf_benefits"] = bool(r.bnf_condition[best_bnf]) if known else None
            r.row["dice_after_correction"] = float(r.dice_after[best_bnf]) if known else math.nan
        regions = [region for region in mine[0].bins if all(region in r.bins for r in mine)]
        pooled = {region: sum((r.bins[region] for r in mine), BinStats.empty()) for region in regions}
        block = {
            "cases": len(mine),
            "dice_mean": float(np.mean([x["dice"] for x in rows])),
            "hd95_mm_mean": float(np.nanmean([x["hd95_mm"] for x in rows])) if any(
                np.isfinite(x["hd95_mm"]) for x in rows) else math.nan,
            "ue_dice_curve": {f"{t:.2f}": float(v) for t, v in zip(THRESHOLDS, ue, strict=True)},
            "ue_best_threshold": float(THRESHOLDS[best]) if np.isfinite(ue[best]) else math.nan,
            "ue_dice_best": float(ue[best]),
            "bnf_curve": {f"{t:.2f}": float(v) for t, v in zip(THRESHOLDS, bnf_curve, strict=True)},
            "bnf_best_threshold": float(THRESHOLDS[best_bnf]) if np.isfinite(bnf_curve[best_bnf]) else math.nan,
            "bnf_fraction": float(bnf_curve[best_bnf]),
            "bnf_fraction_at_ue_threshold": float(bnf_curve[best]),
            "pooled_signed_calibration_error": pooled_signed_error(mine),
            "referral_fractions": FRACTIONS.tolist(),
            "referral_dice_mean": {m: np.mean([r.referral[m] for r in mine], axis=0).tolist()
                                   for m in REFERRAL_MAPS if all(m in r.referral for r in mine)},
            "referral_threshold": {
                m: {"thresholds": REFERRAL_THRESHOLDS.tolist(),
                    "mean_percent_referred": (100 * np.mean([r.threshold_referral[m]["fraction"] for r in mine],
                                                            axis=0)).tolist(),
                    "mean_dice": np.mean([r.threshold_referral[m]["dice"] for r in mine], axis=0).tolist()}
                for m in REFERRAL_MAPS if all(m in r.threshold_referral for r in mine)},
        }
        for region, stats in pooled.items():
            block[f"ece_mean_{region}"] = float(np.nanmean([x[f"ece_{region}"] for x in rows]))
            block[f"ece_pooled_{region}"] = stats.ece()
            block[f"reliability_{region}"] = {k: v.tolist() for k, v in stats.reliability().items()}
            for k in ("mce", "nll", "brier"):
                block[f"{k}_mean_{region}"] = float(np.nanmean([x[f"{k}_{region}"] for x in rows]))
        if all(r.confusion for r in mine):  # every case has its entropy map
            counts = {g: np.sum([r.confusion[g] for r in mine], axis=0) for g in ("TP", "FP", "FN", "TN")}
            block["entropy_by_confusion_box"] = {"edges": CONFUSION_EDGES.tolist(),
                                                 **{g: c.tolist() for g, c in counts.items()}}
        dice = np.array([x["dice"] for x in rows])
        block["per_case"] = {"case": [x["case"] for x in rows],
                             **{c: score_column(rows, c).tolist() for c in PER_CASE_COLUMNS},
                             **{s: score_column(rows, s).tolist() for s in SUBJECT_SCORES},
                             "empty_prediction": [bool(x.get("empty_prediction")) for x in rows]}
        block["empty_predictions"] = sum(bool(x.get("empty_prediction")) for x in rows)
        if any("annotators" in x for x in rows):
            disagreement = score_column(rows, "annotator_disagreement")
            ged2 = score_column(rows, "ged2")
            block["ged2_mean"] = float(np.nanmean(ged2)) if np.isfinite(ged2).any() else math.nan
            block["annotator_disagreement_mean"] = float(np.nanmean(disagreement))
            voxel_r = score_column(rows, "entropy_vs_vote_entropy_r")
            block["entropy_vs_vote_entropy_r_mean"] = float(np.nanmean(voxel_r))
            block["scores_vs_disagreement"] = {
                s: score_quality_correlation(empty_as_most_uncertain(rows, s), disagreement) for s in SUBJECT_SCORES}
        block["score_vs_dice"] = {s: score_quality_correlation(empty_as_most_uncertain(rows, s), dice)
                                  for s in SUBJECT_SCORES}
        block["failure_detection"] = failure_table(rows)
        block |= decision_summary(rows)
        ood_rows = [{"case": case, **classes[label], "empty_prediction": empty_prediction(classes[label])}
                    for case, classes in sorted(ood_scores.items()) if label in classes]
        if ood_rows:
            block["ood"] = {
                "cases": [x["case"] for x in ood_rows],
                "scores": {s: score_column(ood_rows, s).tolist() for s in SUBJECT_SCORES},
                "auroc": {s: ood_detection(uncertain_side(s, empty_as_most_uncertain(ood_rows, s, rows)),
                                           uncertain_side(s, empty_as_most_uncertain(rows, s, ood_rows)))
                          for s in SUBJECT_SCORES},
            }
        summary["classes"][label] = block
    return summary


def evaluate_folder(folder: Path, references: Path, labels: dict[int, str] | None = None,
                    masks: Path | None = None, ood: set[str] | None = None
                    ) -> tuple[list[CaseResult], dict[str, dict], list[str]]:
    """Every case of one method's folder: in-distribution results, OOD cases' scores, and notes on the
    cases left out (no reference; OOD without scores). Raises when no case can be evaluated."""
    cases = case_folders(folder)
    if not cases:
        raise InputImageError(f"No case folders (with manifest.json or segmentation.<ext>) in {folder}")
    results: list[CaseResult] = []
    ood_scores: dict[str, dict] = {}
    notes: list[str] = []
    names = reference_names(cases)
    for case_dir in cases:
        name, where = readable(case_dir.name), f"{readable(folder.name)}/{readable(case_dir.name)}"
        if ood and name in ood:
            scores = ood_case_scores(case_dir, labels)
            if scores:
                ood_scores[name] = scores
            else:
                notes.append(f"{where}: out-of-distribution case without scores.json, left out of the OOD AUROC")
            continue
        try:
            reference = find_reference_named(references, names[case_dir])
        except InputImageError:
            tried = " or ".join(f"{readable(n)}.<ext>" for n in names[case_dir])
            notes.append(f"{where}: skipped, no reference {tried} or {name}/ in {references}")
            continue
        mask = (find_reference_named(masks, names[case_dir], "region mask (--masks)", annotators=False)
                if masks else None)
        if "entropy" not in {e.get("map") for e in case_manifest(case_dir, labels)["outputs"]}:
            notes.append(f"{where}: no entropy map (left out by segment --maps): its U-E Dice, BnF and "
                         "entropy-by-outcome values are n/a")
        results += evaluate_case(case_dir, reference, labels, mask)
    if not results:
        raise InputImageError(f"No case in {folder} could be evaluated: " + "; ".join(notes))
    return results, ood_scores, notes
