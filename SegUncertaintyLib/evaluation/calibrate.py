"""``seguncertainty calibrate``'s fitting half: pair a cohort's case folders with reference labelmaps, fit
(evaluation/calibration_fit.py), and build the calibration file's document and the report.

Pairing: the reference of a case is ``LABELS/<name>.<ext>`` where name is the case's input file name without
its image suffix, or, nnU-Net style, that name without a trailing ``_0000`` channel suffix (``case_0000.nii.gz``
pairs with ``case.nii.gz``), or the case id (a CSV's ``case`` column). A case without a reference is left out
with a note.

Training cases (:func:`training_overlap`): an nnU-Net model folder's ``splits_final.json`` (in the
``Trainer__Plans__configuration`` folder or the dataset folder above it; nnU-Net writes it in the
preprocessed dataset folder) lists per fold the cases it trained on ("train"; fold_all trained on every
listed case). A calibration case whose reference name (nnU-Net's case identifier) is among the training
cases of a fold the model uses breaks exchangeability with new cases (its errors are smaller): ``calibrate``
warns naming them and notes them in the calibration, or refuses with ``--strict``.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from pathlib import Path

from .. import __version__
from ..calibration.store import FORMAT_VERSION, threshold_to_json
from ..core.errors import InputImageError
from ..io.images import IMAGE_SUFFIXES, image_suffix
from .calibration_figures import write_figures
from .calibration_fit import fit_calibration, read_labelled_case
from .case_folder import read_json
from .temperature_fit import CAP, collect_logits, fit_run_temperature, temperature_report

_CHANNEL = re.compile(r"_\d{4}$")


def reference_names(case: str, given: str) -> list[str]:
    """Candidate reference names for a case (see the module docstring), in the order tried."""
    name = Path(given.rstrip("/")).name
    suffix = image_suffix(name)
    stem = name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name
    return list(dict.fromkeys([stem, _CHANNEL.sub("", stem), case]))


def pair_references(rows: list[dict], cohort: Path, labels: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(case folder, reference) for every finished row with a reference, and notes for those without."""
    pairs, notes = [], []
    for row in rows:
        if row["status"] == "failed":
            continue
        found = next((labels / f"{n}{s}" for n in reference_names(row["case"], row["input"]) for s in IMAGE_SUFFIXES
                      if (labels / f"{n}{s}").is_file()), None)
        if found is None:
            notes.append(f"case {row['case']} ({row['input']}): no reference in {labels}; left out")
        else:
            pairs.append((cohort / row["case"], found))
    return pairs, notes


SPLITS = "splits_final.json"


def nnunet_training_cases(model_folder: Path) -> tuple[set[str], Path] | None:
    """The case identifiers the nnU-Net model in ``model_folder`` trained on (the "train" lists of the folds
    it has; every listed case for fold_all) and the splits file read; None for another format or without
    ``splits_final.json``; InputImageError when the file is unreadable."""
    from ..models.adapters.nnunet import find_folds
    from ..models.registry import nnunet_model_folder

    folder = nnunet_model_folder(model_folder) if model_folder.is_dir() else None
    splits = folder and next((p for p in (folder / SPLITS, folder.parent / SPLITS) if p.is_file()), None)
    if not splits:
        return None
    try:
        folds = json.loads(splits.read_text(encoding="utf-8"))
        cases: set[str] = set()
        for name, _ in find_folds(folder):
            chosen = folds[:1] if name == "fold_all" else [folds[int(name[len("fold_"):])]]
            for split in chosen:
                cases |= set(split["train"]) | (set(split["val"]) if name == "fold_all" else set())
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputImageError(f"Cannot read the nnU-Net splits {splits}: {exc}") from exc
    return cases, splits


def training_overlap(pairs: list[tuple[Path, Path]], model_folder: str | Path) -> str | None:
    """One line naming the calibration cases the nnU-Net model trained on (matched by the reference's name,
    nnU-Net's case identifier), or None."""
    found = nnunet_training_cases(Path(model_folder)) if model_folder else None
    if found is None:
        return None
    trained, splits = found
    names = [reference.name[: -len(image_suffix(reference.name))] for _, reference in pairs]
    overlap = sorted(n for n in names if n in trained)
    if not overlap:
        return None
    shown = ", ".join(overlap[:10]) + (f" and {len(overlap) - 10} more" if len(overlap) > 10 else "")
    return (f"{len(overlap)} calibration case(s) are training cases of the nnU-Net model ({splits}): {shown}; "
            "the guarantee assumes cases the model did not train on")


def calibration_document(pairs: list[tuple[Path, Path]], alpha: float, map_name: str, failure_dice: float,
                         samples: int | None, options=None, work: Path | None = None, cap: int = CAP) -> dict:
    """The calibration file's content (schema: calibration/calibration.schema.json) fitted on ``pairs``; with
    the run's ``options`` (SegmentOptions) and a ``work`` folder also the temperature (temperature_fit.py:
    the passes' logits of up to ``cap`` box voxels per case are kept in ``work``)."""
    cases = [read_labelled_case(folder, reference, map_name) for folder, reference in pairs]
    fitted = fit_calibration(cases, alpha, map_name, failure_dice)
    if options is not None and work is not None and cap > 0:
        collected = collect_logits(cases, [folder for folder, _ in pairs], options, work, cap)
        fitted["temperature"] = fit_run_temperature(collected, cases[0].classes, seed=options.seed, cap=cap)
    manifests = [read_json(folder / "manifest.json", "manifest") for folder, _ in pairs]
    scores = read_json(pairs[0][0] / "scores.json", "scores")
    first = manifests[0]
    keys = {(tuple(m["sha256"] for m in x["model"]["members"]), x["method"]) for x in manifests}
    if len(keys) != 1:
        raise InputImageError("the calibration cases were run with different weights or methods")
    created = datetime.datetime.now(datetime.timezone.utc)
    weights = [m["sha256"] for m in first["model"]["members"]]
    doc_id = (f"{first['model']['name']}-{first['method']}-{samples or 'default'}-"
              f"{created.strftime('%Y%m%dT%H%M%SZ')}-{weights[0][:8]}")
    fitted["referral"]["threshold"] = threshold_to_json(fitted["referral"]["threshold"])
    return {
        "format_version": FORMAT_VERSION, "id": re.sub(r"[^A-Za-z0-9._-]", "_", doc_id),
        "created": created.isoformat(timespec="seconds"), "tool": f"seguncertainty {__version__}",
        "model": {"name": first["model"]["name"], "version": first["model"]["version"], "weights": weights,
                  "folder": first["model"].get("folder", "")},
        "method": first["method"], "samples": samples, "n_samples": scores["n_samples"], "n": fitted["n"],
        "alpha": alpha, "map": map_name, "failure_dice": failure_dice,
        "cases": [{"case": folder.name, "reference": str(reference),
                   "input_sha256": m.get("settings", {}).get("input_sha256") or ""}
                  for (folder, reference), m in zip(pairs, manifests, strict=True)],
        "referral": fitted["referral"], "classes": fitted["classes"], "notes": fitted["notes"],
        **({"temperature": fitted["temperature"]} if "temperature" in fitted else {"format_version": 1}),
    }


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def write_report(doc: dict, calibration_file: Path, out: Path) -> Path:
    """``out``/report.md with its figures (calibration_figures.py) and a copy of the calibration as
    calibration.json; returns report.md."""
    referral = doc["referral"]
    lines = [f"# Calibration {doc['id']}", "",
             f"Model {doc['model']['name']} {doc['model']['version']}, method {doc['method']}, "
             f"samples {doc['samples'] if doc['samples'] is not None else 'default'} ({doc['n_samples']} in all), "
             f"n = {doc['n']} labelled cases, alpha = {doc['alpha']}. Calibration file: `{calibration_file}`. "
             "It applies only to runs of these weights, this method and this sample count.", "",
             *(f"- Note: {note}" for note in doc["notes"]), "",
             "## Referral threshold (conformal risk control)", "",
             f"Map `{doc['map']}`, threshold {referral['threshold']}; mean missed-error fraction on the "
             f"calibration cases {_number(referral['mean_missed_error_fraction'])}, bound "
             f"n/(n+1)·mean + 1/(n+1) = {_number(referral['bound'])} <= alpha.", "",
             f"Guarantee: {referral['guarantee']}", "",
             f"Workload at the threshold (mean over the calibration cases): "
             f"{_number(referral['workload_mean']['flagged_ml'])} mL flagged, "
             f"{_number(referral['workload_mean']['flagged_percent_of_segment'])} % of the segment.", ""]
    if "temperature" in doc:
        lines += temperature_report(doc["temperature"], out)
    for name, block in doc["classes"].items():
        lines += [f"## Class {name}", "", f"Predicted Dice: {block['predicted_dice']['method']}, coverage "
                  f"{block['predicted_dice']['coverage']:g}.", "",
                  f"Failure detection on held-out folds (failure: Dice < {doc['failure_dice']}):", "",
                  "| score | AURC | E-AURC | oracle AURC | random AURC | failure AUROC |", "|---|---|---|---|---|---|"]
        for score, d in block["failure_detection"].items():
            lines.append(f"| {score} | {_number(d['aurc'])} | {_number(d['e_aurc'])} | {_number(d['oracle_aurc'])} "
                         f"| {_number(d['random_aurc'])} | {_number(d['failure_auroc'])} |")
        best = min(block["failure_detection"].items(), key=lambda kv: (math.inf if math.isnan(kv[1]["aurc"])
                                                                        else kv[1]["aurc"]))[0]
        lines += ["", f"Lowest AURC (best failure detector here): {best}. Zenk et al. 2025 found pairwise Dice "
                  f"(dpw) the strongest detector; {'this holds' if best == 'dpw' else 'this does not hold'} here.",
                  "", "Calibration range per score (min, max; cases outside read 'outside the calibration data'): "
                  + ", ".join(f"{s} [{lo:.4g}, {hi:.4g}]" for s, (lo, hi) in block["usual_ranges"].items()), ""]
    out.mkdir(parents=True, exist_ok=True)
    lines += write_figures(doc, out)
    (out / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
