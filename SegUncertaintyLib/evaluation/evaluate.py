"""Evaluate ``seguncertainty segment`` outputs against reference segmentations, case by case.

A prediction folder holds one sub-folder per case with the segment command's ``manifest.json``; the
reference for case ``NAME`` is ``REFS/NAME.<ext>`` (a labelmap with the model's label values), else one
named after the case's input (``input_stem``: a cohort's case folders carry hashed ids, the references
the scans' names), when no other case of the folder has an input of that name.
Everything is computed per case and per foreground class, and the dataset summary is built from the
per-case results and summed calibration bins, so memory stays that of one case.

Out-of-distribution cases (``--ood``) need no reference: only their subject scores are read, and they
are reported on their own (AUROC per score); they never enter calibration, threshold selection,
correlations or the figures. An in-distribution case without a reference is skipped with a note.

Failure detection and calibrated decisions (issue 21, section 3), per class over the evaluated cases:
AURC, E-AURC, oracle and random AURC and the failure AUROC (Dice < ``FAILURE_DICE``) of each subject score
(empty predictions as the most uncertain cases, the stated convention) and, for calibrated runs, of the
predicted Dice (calibration/failure.py); for calibrated runs also the realised missed-error fraction at the
run's threshold λ̂ (scores.json ``referral``: the fraction of the case's error voxels, prediction !=
reference over all classes, whose map value is below λ̂; the same value on every class row of a case)
against α, and how many predicted-Dice intervals hold the actual Dice against their nominal coverage.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..calibration.failure import failure_detection
from ..calibration.risk_control import error_values, missed_error_fraction
from ..calibration.store import threshold_from_json
from ..core.errors import InputImageError, UsageError
from ..core.files import read_json_object, safe_stems
from ..core.manifest import MANIFEST, ManifestError, is_plain_name, parse_manifest
from ..inference.scores import PAPERS, SUBJECT_SCORES, uncertain_side
from ..io.header import describe_grid, read_header, same_grid
from ..io.images import IMAGE_SUFFIXES, image_suffix, read_volume
from .calibration import BinStats, calibration_split
from .cohort_stats import STATISTICS, generalized_energy_distance, ood_detection, score_quality_correlation
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
FAILURE_DICE = 0.8  # a case fails below this Dice (failure AUROC), as calibrate's default --failure-dice
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


def readable(name: str) -> str:
    """A file or argument name as text for reports: names the system decoded with surrogate escapes
    (non-ASCII under an ASCII locale) are read as UTF-8, undecodable bytes replaced. Paths keep the raw name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def method_names(folders: list[Path]) -> list[str]:
    """One distinct report name per prediction folder: its base name, or as many trailing path parts as
    it takes to tell folders apart (``a/mc`` and ``b/mc`` -> "a/mc", "b/mc"). The same folder given twice
    is a usage error: its results would be counted twice."""
    resolved = [Path(os.path.abspath(f)) for f in folders]
    if len(set(resolved)) != len(resolved):
        raise UsageError("evaluate: the same prediction folder is given twice")
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        names = [readable("/".join(p.parts[-depth:]).lstrip("/")) for p in resolved]
        if len(set(names)) == len(names):
            return names
    raise AssertionError("distinct absolute paths always differ in some trailing part")


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


def find_reference(refs: Path, case: str, what: str = "reference segmentation", annotators: bool = True) -> Path:
    """``REFS/<case>.<ext>``, or (``annotators``) the folder ``REFS/<case>/`` holding one labelmap per
    annotator; InputImageError naming ``what`` when there is neither."""
    if annotators and (refs / case).is_dir():
        return refs / case
    for suffix in IMAGE_SUFFIXES:
        if (refs / f"{case}{suffix}").is_file():
            return refs / f"{case}{suffix}"
    raise InputImageError(f"No {what} for case '{case}' in {refs} ({case}.nii.gz, .nrrd, ...)")


def input_stem(case_dir: Path) -> str | None:
    """The file name, without its image suffix, of the input the case's manifest.json names (a DICOM
    series: its folder's name); None without a manifest or an input."""
    path = case_dir / MANIFEST
    try:
        given = read_json(path, "case manifest").get("input") if path.is_file() else None
    except InputImageError:
        return None
    if not isinstance(given, str) or not Path(given).name:
        return None
    name = Path(given).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def reference_names(cases: list[Path]) -> dict[Path, list[str]]:
    """Per case folder, the names its reference may have, in order: the folder's name, then its input's
    (``input_stem``) where that differs and no other case has an input of the same name."""
    stems = {case: input_stem(case) for case in cases}
    counts: dict[str, int] = {}
    for stem in stems.values():
        if stem is not None:
            counts[stem] = counts.get(stem, 0) + 1
    return {case: [case.name, *([stem] if stem not in (None, case.name) and counts[stem] == 1 else [])]
            for case, stem in stems.items()}


def find_reference_named(refs: Path, names: list[str], what: str = "reference segmentation",
                         annotators: bool = True) -> Path:
    """``find_reference`` for the first of ``names`` that has one; InputImageError naming them all."""
    for name in names:
        try:
            return find_reference(refs, name, what, annotators)
        except InputImageError:
            continue
    raise InputImageError(f"No {what} for case '{names[0]}' in {refs} (" +
                          " or ".join(f"{n}.nii.gz" for n in names) + ", .nrrd, ...)")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from an untrusted file; InputImageError naming ``what`` and the problem otherwise."""
    return read_json_object(path, what, InputImageError)


def check_case_manifest(manifest: dict, path: Path) -> dict:
    """The fields evaluate reads from a case manifest, checked: ``labels`` {"<int>": name}, ``outputs`` a
    list of {"file": plain file name, "kind": text}, one of kind "labelmap". InputImageError otherwise."""
    def bad(problem: str) -> InputImageError:
        return InputImageError(f"Case manifest {path}: {problem}")

    try:
        parse_manifest(manifest)
    except ManifestError as exc:
        raise bad(str(exc)) from None
    labels, outputs = manifest.get("labels"), manifest.get("outputs")
    if not isinstance(labels, dict) or not labels:
        raise bad("field 'labels' must map label values to names")
    for value, name in labels.items():
        if not (isinstance(value, str) and value.strip().lstrip("-").isdigit() and isinstance(name, str) and name):
            raise bad(f"field 'labels' has the entry {value!r}: {name!r}; expected \"<integer>\": \"<name>\"")
    for entry in outputs:
        file, kind = entry.get("file"), entry.get("kind")
        if not is_plain_name(file):
            raise bad(f"output {entry!r} needs 'file' (a file name inside the case folder) and 'kind'")
        if kind == "samples" and not isinstance(entry.get("label"), str):
            raise bad(f"output {file} of kind 'samples' needs 'label'")
    if not any(e["kind"] == "labelmap" for e in outputs):
        raise bad("no output of kind 'labelmap' (the segmentation)")
    return manifest


PLAIN_FOLDER_MAPS = (*REFERRAL_MAPS, "expected_entropy")


def plain_manifest(case_dir: Path, labels: dict[int, str] | None = None) -> dict:
    """A manifest for a folder of plain volumes from another tool (no manifest.json).

    Expects ``segmentation.<ext>`` (a labelmap) and optionally ``probability_<label name>.<ext>`` (the name
    as it is, or as a safe file name: core.files.safe_stems),
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
    stems = safe_stems(labels.values())  # as write_outputs names them; the name itself is accepted too
    for name in labels.values():
        found = next((images[f"probability_{s}"] for s in (name, stems[name]) if f"probability_{s}" in images), None)
        if found is not None:
            outputs.append({"file": found, "kind": "probability", "label": name})
    outputs += [{"file": images[m], "kind": "uncertainty", "map": m} for m in PLAIN_FOLDER_MAPS if m in images]
    if (case_dir / "scores.json").is_file():
        outputs.append({"file": "scores.json", "kind": "scores"})
    return {"labels": {"0": "background", **{str(k): v for k, v in labels.items()}}, "outputs": outputs}


def case_manifest(case_dir: Path, labels: dict[int, str] | None = None) -> dict:
    """The case's manifest.json (from ``segment``), or one built from its plain volumes."""
    path = case_dir / MANIFEST
    if path.is_file():
        return check_case_manifest(read_json(path, "case manifest"), path)
    return plain_manifest(case_dir, labels)


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
    scores = _score_classes(files["scores"]) if "scores" in files else {}
    decisions = calibrated_decisions(files, segmentation, reference)
    maps = {name: _array(files[name])[0] for name in REFERRAL_MAPS if name in files}
    classes = [(int(v), name) for v, name in manifest["labels"].items() if int(v) != 0]
    probs = {name: (np.clip(_array(files[name])[0], 0, 1) if name in files else (segmentation == v).astype(np.float64))
             for v, name in classes}
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


def calibrated_decisions(files: dict[str, Path], segmentation: np.ndarray, reference: np.ndarray | None) -> dict:
    """A calibrated run's realised missed-error fraction at its threshold (scores.json ``referral``) and α;
    None values for a run without a calibration, without the threshold's map, or with several annotators."""
    referral = read_json(files["scores"], "scores file").get("referral") if "scores" in files else None
    if referral is None or reference is None:
        return {"missed_error_fraction": None, "referral_alpha": None}
    try:
        threshold, alpha = threshold_from_json(referral["threshold"]), float(referral["alpha"])
        map_name = referral["map"]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise InputImageError(f"Scores file {files['scores']}: field 'referral' needs 'map', a numeric 'threshold' "
                              f"and 'alpha' ({type(exc).__name__}: {exc})") from exc
    if map_name not in files:
        return {"missed_error_fraction": None, "referral_alpha": None}
    errors = error_values(_array(files[map_name])[0], segmentation, reference)
    return {"missed_error_fraction": missed_error_fraction(errors, threshold), "referral_alpha": alpha}


def failure_table(rows: list[dict], failure_dice: float = FAILURE_DICE) -> dict[str, dict | None]:
    """Per subject score (empty predictions as the most uncertain) and, when every row has one, the predicted
    Dice: calibration.failure.failure_detection against the rows' Dice; None for a score undefined on some
    non-empty case (one sample)."""
    dice = _score_column(rows, "dice")
    if not np.isfinite(dice).all():
        return {s: None for s in SUBJECT_SCORES}
    columns = {s: uncertain_side(s, empty_as_most_uncertain(rows, s)) for s in SUBJECT_SCORES}
    predicted = _score_column(rows, "predicted_dice")
    if np.isfinite(predicted).all():
        columns["predicted_dice"] = -predicted
    return {s: failure_detection(u, dice, failure_dice) if np.isfinite(u).all() else None
            for s, u in columns.items()}


def decision_summary(rows: list[dict]) -> dict:
    """The realised missed-error fraction (mean over the calibrated cases, with α) and the predicted-Dice
    intervals' coverage (how many hold the actual Dice, with the nominal coverage); {} without calibration."""
    out = {}
    missed = _score_column(rows, "missed_error_fraction")
    if np.isfinite(missed).any():
        alphas = {r["referral_alpha"] for r in rows if r.get("referral_alpha") is not None}
        out["missed_error_fraction"] = {"mean": float(np.nanmean(missed)), "n": int(np.isfinite(missed).sum()),
                                        "alpha": alphas.pop() if len(alphas) == 1 else None}
    low, high = _score_column(rows, "predicted_dice_low"), _score_column(rows, "predicted_dice_high")
    known = np.isfinite(low) & np.isfinite(high)
    if known.any():
        dice = _score_column(rows, "dice")[known]
        held = int(((low[known] <= dice) & (dice <= high[known])).sum())
        nominal = {r["predicted_dice_nominal_coverage"] for r in rows if r.get("predicted_dice_nominal_coverage")}
        out["predicted_dice_coverage"] = {"held": held, "n": int(known.sum()), "fraction": held / int(known.sum()),
                                          "nominal": nominal.pop() if len(nominal) == 1 else None}
    return out


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


def read_samples(path: Path, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The per-sample masks of a ``samples_<label>.npz`` (segment --save-samples); InputImageError if the
    file is unreadable or its bits do not fit ``shape`` (z, y, x) and its sample count."""
    try:
        with np.load(path, allow_pickle=False) as data:
            bits, n = np.asarray(data["bits"]), int(data["n_samples"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise InputImageError(f"Cannot read the saved samples {path}: {exc}") from exc
    if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8, *shape) or n < 1:
        raise InputImageError(f"Saved samples {path}: bits {bits.shape} {bits.dtype} do not hold {n} sample(s) "
                              f"on the case's grid {shape}")
    return [((bits[t // 8] >> (t % 8)) & 1).astype(bool) for t in range(n)]


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


def _score_column(rows: list[dict], score: str) -> np.ndarray:
    return np.array([np.nan if row.get(score) is None else row[score] for row in rows], dtype=float)


def empty_prediction(class_scores: dict, predicted_ml: float | None = None) -> bool:
    """A class's scores.json ``empty_prediction`` flag; for a scores.json without it, whether the delivered
    segmentation is empty (``predicted_ml`` = 0, else its ``segmentation_volume_ml`` = 0)."""
    if "empty_prediction" in class_scores:
        return bool(class_scores["empty_prediction"])
    volume = predicted_ml if predicted_ml is not None else class_scores.get("segmentation_volume_ml")
    return volume == 0


def empty_as_most_uncertain(rows: list[dict], score: str, others: list[dict] = ()) -> np.ndarray:
    """``score`` of each row, where an empty prediction (``empty_prediction``) takes the most uncertain value
    the non-empty rows of ``rows`` and ``others`` reach (the maximum; the minimum for dpw): the stated
    convention (scores.SCORE_CONVENTIONS["empty_prediction"]) that keeps missed structures in the statistics,
    ranked at least as uncertain as every other case. NaN when no non-empty row defines the score."""
    values = _score_column(rows, score)
    reached = uncertain_side(score, np.concatenate([
        _score_column([r for r in group if not r.get("empty_prediction")], score) for group in (rows, others)]))
    reached = reached[np.isfinite(reached)]
    worst = float(uncertain_side(score, [reached.max()])[0]) if reached.size else np.nan
    empty = np.array([bool(r.get("empty_prediction")) for r in rows], dtype=bool)
    return np.where(empty, worst, values)


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
                             **{c: _score_column(rows, c).tolist() for c in PER_CASE_COLUMNS},
                             **{s: _score_column(rows, s).tolist() for s in SUBJECT_SCORES},
                             "empty_prediction": [bool(x.get("empty_prediction")) for x in rows]}
        block["empty_predictions"] = sum(bool(x.get("empty_prediction")) for x in rows)
        if any("annotators" in x for x in rows):
            disagreement = _score_column(rows, "annotator_disagreement")
            ged2 = _score_column(rows, "ged2")
            block["ged2_mean"] = float(np.nanmean(ged2)) if np.isfinite(ged2).any() else math.nan
            block["annotator_disagreement_mean"] = float(np.nanmean(disagreement))
            voxel_r = _score_column(rows, "entropy_vs_vote_entropy_r")
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
                "scores": {s: _score_column(ood_rows, s).tolist() for s in SUBJECT_SCORES},
                "auroc": {s: ood_detection(uncertain_side(s, empty_as_most_uncertain(ood_rows, s, rows)),
                                           uncertain_side(s, empty_as_most_uncertain(rows, s, ood_rows)))
                          for s in SUBJECT_SCORES},
            }
        summary["classes"][label] = block
    return summary


def _numbers(values: list, count: int) -> bool:
    """``count`` numbers (not booleans)."""
    return len(values) == count and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _score_classes(path: Path) -> dict[str, dict]:
    """The per-class subject scores of a scores.json ({class: {score: value}}); InputImageError if malformed."""
    classes = read_json(path, "scores file").get("classes")
    if not isinstance(classes, dict) or not all(isinstance(v, dict) for v in classes.values()):
        raise InputImageError(f"Scores file {path}: field 'classes' must map class names to their scores")
    for name, values in classes.items():
        for score in SUBJECT_SCORES:
            value = values.get(score)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InputImageError(f"Scores file {path}: '{name}'.'{score}' must be a number or null, "
                                      f"got {value!r}")
        predicted = values.get("predicted_dice")
        if predicted is not None and not (isinstance(predicted, dict) and _numbers(
                [predicted.get("value"), *(predicted.get("interval") or [])], 3)):
            raise InputImageError(f"Scores file {path}: '{name}'.'predicted_dice' must hold a numeric 'value' and "
                                  f"'interval' [low, high], got {predicted!r}")
    return classes


def ood_case_scores(case_dir: Path, labels: dict[int, str] | None = None) -> dict[str, dict]:
    """An OOD case's subject scores per class from its scores.json (no reference needed); {} if it has none."""
    manifest = case_manifest(case_dir, labels)
    entry = next((e for e in manifest["outputs"] if e["kind"] == "scores"), None)
    return _score_classes(case_dir / entry["file"]) if entry else {}


def case_folders(folder: Path) -> list[Path]:
    """The case sub-folders of one method's folder (with manifest.json or segmentation.<ext>)."""
    return sorted({p.parent for pattern in ("*/manifest.json", "*/segmentation.*") for p in folder.glob(pattern)})


def read_ood_list(path: Path, folders: list[Path]) -> set[str]:
    """The case names of an --ood file (one per line, blank lines ignored). InputImageError (exit 3) when it
    cannot be read, as for any input file; UsageError (exit 2) when it names a case found in none of the
    prediction ``folders`` (a typo would otherwise silently pool an OOD case with the others)."""
    try:
        names = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    except FileNotFoundError:
        raise InputImageError(f"--ood file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputImageError(f"Cannot read --ood file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    known = {readable(case.name) for folder in folders for case in case_folders(folder)}
    unknown = sorted(names - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UsageError(f"--ood file {path} names {len(unknown)} case(s) found in no prediction folder: {shown}")
    return names


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
