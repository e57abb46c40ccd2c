"""Real-data benchmark of the five papers' findings (issue #13): both bundled models, every method, real
labelled CT and MR from the package registries, ``seguncertainty evaluate`` with references and OOD cases.

    python Testing/benchmarks/bench_papers.py [--cache Testing/scripts/_work] [--samples 10]

Data (fetched once into the gitignored cache by the project's own scripts, sha256 checked):
TotalSegmentator 2.18.0's test files (Testing/scripts/ct_data.py), pyradiomics 3.1.0's test cases
(Testing/scripts/radiomics_data.py), MNI152 (nilearn) and Colin27 and the macaque INIA19 brain (Debian
mricron-data; Testing/scripts/brain_data.py). VOLUMES says, per volume, what its labels are, whose training
data it is, and what it is for each model:

- ``id``: meant for the model, with a reference mapped to the model's labels: evaluated;
- ``lesion``: meant for the model, but its label marks a lesion only: scores, and the fraction of the
  lesion inside the predicted foreground (a lesion inside the brain must be inside the brain mask);
- ``shift``: same modality, another field of view (chest CT for the abdominal model): scores, AUROC against
  the ``id`` cases computed here;
- ``ood``: another modality or species (Mehrtash et al. 2020's OOD test): evaluate's ``--ood``.

Each model segments its volumes with every method in-process (``segment_image`` + ``write_outputs``, the
command line's own two calls), then the command line's ``evaluate`` runs on all methods at once. Prints
Markdown tables; the summary.json files stay in ``<cache>/bench_papers/<model>/report``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import brain_data  # noqa: E402
import ct_data  # noqa: E402
import radiomics_data  # noqa: E402

from SegUncertaintyLib.cli import main as cli_main  # noqa: E402
from SegUncertaintyLib.evaluation.cohort_stats import ood_detection, score_quality_correlation  # noqa: E402
from SegUncertaintyLib.inference.pipeline import segment_image  # noqa: E402
from SegUncertaintyLib.inference.scores import SUBJECT_SCORES, uncertain_side  # noqa: E402
from SegUncertaintyLib.models.loader import load_model  # noqa: E402
from SegUncertaintyLib.results.run_folder import write_outputs  # noqa: E402

BRAIN, CT = "brainmask-t1", "abdomen-ct-demo"
ROLES = ("id", "lesion", "shift", "ood")
# the combined methods (ensemble+mc_dropout: 3 T passes; ensemble+tta: 6) are left out for the CPU budget
METHODS = ("softmax", "mc_dropout", "ensemble", "tta")
TS, RAD = "TotalSegmentator 2.18.0 sdist", "pyradiomics 3.1.0 sdist"


@dataclass(frozen=True)
class Volume:
    """One labelled (or unlabelled) volume: where it comes from, what its labels are, its role per model."""

    name: str
    source: str
    modality: str
    labels: str
    training_of: str | None = None  # the bundled model trained on it
    roles: dict[str, str] = field(default_factory=dict)  # model -> one of ROLES; absent: not run


VOLUMES = (
    Volume("ts_ct_train", f"{TS}, example_ct_sm + example_seg", "CT abdomen, 3 mm", "5 organs: TotalSegmentator's "
           "output (a model's, not a manual tracing)", CT, {CT: "id", BRAIN: "ood"}),
    Volume("ts_ct_dicom", f"{TS}, example_ct_dicom + example_seg_dicom", "CT abdomen, DICOM 0.98 x 0.98 x 2 mm, "
           "20 slices", "liver, spleen, stomach: TotalSegmentator's output", None, {CT: "id", BRAIN: "ood"}),
    Volume("ts_mr", f"{TS}, example_mr_sm + example_seg_mr", "MR abdomen, 3 mm", "5 organs: TotalSegmentator "
           "MR output", None, {CT: "ood", BRAIN: "ood"}),
    Volume("rad_lung1", f"{RAD}, data/lung1", "CT chest, 0.57 x 0.57 x 5 mm; lowest 96 mm at 3 mm", "one lung lesion",
           None, {CT: "shift", BRAIN: "ood"}),
    Volume("rad_lung2", f"{RAD}, data/lung2", "CT chest, 0.63 x 0.63 x 5 mm; lowest 96 mm at 3 mm", "one lung lesion",
           None, {CT: "shift"}),
    Volume("rad_brain1", f"{RAD}, data/brain1", "MR head, 0.78 x 0.78 x 6.5 mm", "one brain lesion", None,
           {BRAIN: "lesion", CT: "ood"}),
    Volume("rad_brain2", f"{RAD}, data/brain2", "MR head, 0.78 x 0.78 x 6.5 mm", "one brain lesion", None,
           {BRAIN: "lesion"}),
    Volume("mni152", "nilearn 0.14.1, MNI152 2009a template", "T1 template, 1 mm", "the template's brain mask "
           "(not a manual tracing)", BRAIN, {BRAIN: "id", CT: "ood"}),
    Volume("colin27", "Debian mricron-data, ch2 + ch2bet", "T1 head, 1 mm", "ch2bet > 0 (a BET output, "
           "tool-made)", BRAIN, {BRAIN: "id"}),
    Volume("macaque", "Debian mricron-data, inia19-t1-brain", "T1 macaque brain (skull-stripped), 0.5 mm",
           "none", None, {BRAIN: "ood"}),
)


def cases_for(model: str, role: str | None = None) -> list[Volume]:
    """The volumes a model is run on (in VOLUMES order), all or those of one role."""
    return [v for v in VOLUMES if model in v.roles and (role is None or v.roles[model] == role)]


def dataset_table(volumes=VOLUMES) -> list[str]:
    """Markdown rows: every volume with its source, modality, labels, training-data flag and roles."""
    rows = ["| volume | source | modality | labels | training data of | role: brainmask-t1 | "
            "role: abdomen-ct-demo |", "|---|---|---|---|---|---|---|"]
    for v in volumes:
        trained = f"**yes: {v.training_of}**" if v.training_of else "no"
        rows.append(f"| {v.name} | {v.source} | {v.modality} | {v.labels} | {trained} | "
                    f"{v.roles.get(BRAIN, '-')} | {v.roles.get(CT, '-')} |")
    return rows


def case_name(volume: Volume, model: str) -> str:
    """The case folder name: marks the model's own training data, so no table can hide it."""
    return f"{volume.name}_TRAINING" if volume.training_of == model else volume.name


def binary_reference(mask: sitk.Image) -> sitk.Image:
    """A 0/1 brain mask (> 0.5) as uint8 on the mask's grid: label 1 = brain, the bundled model's label."""
    out = sitk.Cast(mask > 0.5, sitk.sitkUInt8)
    out.CopyInformation(mask)
    return out


def lesion_inside(segmentation: np.ndarray, lesion: np.ndarray) -> float | None:
    """Fraction of the lesion's voxels that the segmentation labels as any foreground (same grid); None
    when the lesion label is empty (e.g. cropped away)."""
    lesion = lesion > 0
    return float((segmentation[lesion] > 0).mean()) if lesion.any() else None


def dice_per_class(segmentation: np.ndarray, reference: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """Dice of each foreground class present in the reference (classes absent from it are left out)."""
    out = {}
    for value, name in labels.items():
        a, b = segmentation == value, reference == value
        if value and b.any():
            out[name] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return out


def resampled(image: sitk.Image, spacing: float, labels: bool = False) -> sitk.Image:
    """The image on an isotropic ``spacing`` mm grid over the same extent (linear; nearest for labels)."""
    size = [max(1, round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                         image.GetOrigin(), (spacing,) * 3, image.GetDirection(), 0, image.GetPixelID())


def load_volumes(cache: Path) -> dict[str, tuple[sitk.Image, dict[str, sitk.Image]]]:
    """name -> (image, {model: reference on the image's grid, or 'lesion': the lesion label})."""
    ts = ct_data.prepare(cache)
    rad = radiomics_data.prepare(cache)
    train, train_labels = ct_data.training_ct(ts)
    _, dicom, dicom_labels = ct_data.heldout_ct(ts)
    mr, mr_labels = ct_data.abdominal_mr(ts)
    out = {"ts_ct_train": (train, {CT: train_labels}), "ts_ct_dicom": (dicom, {CT: dicom_labels}),
           "ts_mr": (mr, {CT: mr_labels})}
    for name in radiomics_data.CASES:
        image, lesion = radiomics_data.case(rad, name)
        if name.startswith("lung"):  # CPU budget: scores only are read, on the models' 3 mm grid, lowest 96 mm
            image, lesion = resampled(image, 3.0)[:, :, :32], resampled(lesion, 3.0, labels=True)[:, :, :32]
        out[f"rad_{name}"] = (image, {"lesion": lesion})
    for name, (t1, mask) in (("mni152", brain_data.mni152()), ("colin27", brain_data.colin27())):
        out[name] = (t1, {BRAIN: binary_reference(mask)})
    out["macaque"] = (brain_data.macaque(), {})
    return out


def run_model(model_name: str, volumes: dict, work: Path, samples: int, methods=METHODS) -> dict:
    """Segment every case of one model with every method into work/<method>/<case>; write references and the
    OOD list; return {case: {method: {seconds, scores, dice, lesion_inside}}}."""
    model = load_model(model_name)
    labels = {int(k): v for k, v in model.card.labels.items()}
    refs, facts = work / "refs", {}
    refs.mkdir(parents=True, exist_ok=True)
    for volume in cases_for(model_name):
        image, references = volumes[volume.name]
        role, case = volume.roles[model_name], case_name(volume, model_name)
        if role == "id":
            sitk.WriteImage(references[model_name], str(refs / f"{case}.nrrd"), True)
        for method in methods:
            out_dir = work / method / case
            start = time.perf_counter()
            outputs = segment_image(image, model, method, samples if "mc_dropout" in method else None,
                                    device="cpu", seed=0)
            seconds = time.perf_counter() - start
            if not out_dir.exists():
                write_outputs(outputs, out_dir, model.description, volume.name, {"seed": 0, "device_requested": "cpu"},
                              overview=False, maps=None if role == "id" else ())
            seg = sitk.GetArrayFromImage(outputs.segmentation)
            fact = {"seconds": seconds, "scores": outputs.scores["classes"]}
            if model_name in references and role != "id":  # a reference on an OOD case: Dice, never pooled
                fact["dice"] = dice_per_class(seg, sitk.GetArrayFromImage(references[model_name]), labels)
            if "lesion" in references:
                fact["lesion_inside"] = lesion_inside(seg, sitk.GetArrayFromImage(references["lesion"]))
            facts.setdefault(case, {})[method] = fact
            print(f"  {model_name} {method:13s} {case:20s} {seconds:6.1f} s", file=sys.stderr, flush=True)
    (work / "ood.txt").write_text("".join(f"{case_name(v, model_name)}\n" for v in cases_for(model_name, "ood")))
    return facts


def evaluate(work: Path, methods=METHODS) -> dict:
    """``seguncertainty evaluate`` on every method's folder, with references and --ood; summary.json,
    {method: {"classes": {label: block}, ...}}."""
    report = work / "report"
    args = ["evaluate", *(str(work / m) for m in methods), "--references", str(work / "refs"),
            "--out", str(report), "--ood", str(work / "ood.txt")]
    if cli_main(args) != 0:
        raise SystemExit("evaluate failed")
    return json.loads((report / "summary.json").read_text())


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def interval(stats: dict, key: str) -> str:
    low, high = stats.get(f"{key}_ci95", [None, None])
    return f"{fmt(stats.get(key), 2)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def method_tables(model: str, summary: dict) -> list[str]:
    """Per method and class: Dice, both calibration conventions, OOD AUROCs; correlations with n and CI."""
    lines = [f"\n#### {model}: evaluated cases (role id)\n",
             "| method | class | n | Dice mean | HD95 mm | ECE fg pooled (volume) | ECE fg mean (box) | "
             "ECE top-label pooled (volume) | ECE top-label mean (box) | NLL top-label (box) | "
             "Brier top-label (box) | U-E Dice best (tau) | BnF (tau) |", "|---" * 13 + "|"]
    for method, block in summary.items():
        for label, c in block["classes"].items():
            lines.append(
                f"| {method} | {label} | {c['cases']} | {fmt(c['dice_mean'])} | {fmt(c['hd95_mm_mean'], 1)} | "
                f"{fmt(c.get('ece_pooled_volume'))} | {fmt(c.get('ece_mean_box'))} | "
                f"{fmt(c.get('ece_pooled_toplabel_volume'))} | {fmt(c.get('ece_mean_toplabel_box'))} | "
                f"{fmt(c.get('nll_mean_toplabel_box'))} | {fmt(c.get('brier_mean_toplabel_box'))} | "
                f"{fmt(c['ue_dice_best'])} ({fmt(c['ue_best_threshold'], 2)}) | "
                f"{fmt(c['bnf_fraction'], 2)} ({fmt(c['bnf_best_threshold'], 2)}) |")
    lines += ["\nSubject level against dataset level (Jungo and Reyes 2019): per case Dice, foreground ECE and "
              "top-label ECE over the volume; the pooled ECE; under / over / well-calibrated fractions of the cases:\n",
              "| method | class | per case: Dice, ECE fg, ECE top-label | pooled ECE fg | under / over / well |",
              "|---" * 5 + "|"]
    for method, block in summary.items():
        for label, c in block["classes"].items():
            per = c["per_case"]
            cases = "; ".join(f"{case} {fmt(d, 2)}, {fmt(e)}, {fmt(t)}" for case, d, e, t in zip(
                per["case"], per["dice"], per["ece_volume"], per["ece_toplabel_volume"], strict=True))
            split = " / ".join(fmt(c.get(f"{k}_fraction"), 2) for k in ("underconfident", "overconfident",
                                                                          "calibrated"))
            lines.append(f"| {method} | {label} | {cases} | {fmt(c.get('ece_pooled_volume'))} | {split} |")
    lines += ["\nScores vs Dice per class (Spearman rho [95 % bootstrap CI], permutation p, n):\n",
              "| method | class | n | " + " | ".join(SUBJECT_SCORES) + " |", "|---" * (3 + len(SUBJECT_SCORES)) + "|"]
    for method, block in summary.items():
        for label, c in block["classes"].items():
            corr = c["score_vs_dice"]
            cells = [f"{interval(corr[s], 'spearman')} p={fmt(corr[s].get('spearman_p'), 2)}" for s in SUBJECT_SCORES]
            lines.append(f"| {method} | {label} | {corr['ulabelled']['n']} | " + " | ".join(cells) + " |")
    lines += ["\nEntropy (normalized) by outcome in the dilated box, pooled over cases (Czolbe et al. 2021): "
              "mean per TP / FP / FN / TN voxel:\n", "| method | class | TP | FP | FN | TN | voxels FP, FN |",
              "|---|---|---|---|---|---|---|"]
    for method, block in summary.items():
        for label, c in block["classes"].items():
            hist = c.get("entropy_by_confusion_box")
            if not hist:
                continue
            edges = np.asarray(hist["edges"])
            centres = (edges[:-1] + edges[1:]) / 2
            means = {g: (float(np.dot(hist[g], centres) / np.sum(hist[g])) if np.sum(hist[g]) else None)
                     for g in ("TP", "FP", "FN", "TN")}
            lines.append(f"| {method} | {label} | " + " | ".join(fmt(means[g]) for g in ("TP", "FP", "FN", "TN"))
                         + f" | {int(np.sum(hist['FP']))}, {int(np.sum(hist['FN']))} |")
    lines += ["\nReferral (Sander et al. 2019's one threshold for all cases; entropy map): mean Dice at about 0, 2, "
              "5, 10 % of voxels referred, and the fixed-fraction curve's Dice at 5 %:\n",
              "| method | class | Dice 0 % | ~2 % | ~5 % | ~10 % | fixed 5 % per case |", "|---" * 7 + "|"]
    for method, block in summary.items():
        for label, c in block["classes"].items():
            curve = c.get("referral_threshold", {}).get("entropy")
            if not curve:
                continue
            x, y = np.asarray(curve["mean_percent_referred"]), np.asarray(curve["mean_dice"])
            picks = [fmt(float(y[np.argmin(np.abs(x - p))])) + f" ({x[np.argmin(np.abs(x - p))]:.1f} %)"
                     for p in (2, 5, 10)]
            fixed = np.asarray(c["referral_dice_mean"]["entropy"])
            at5 = fmt(float(fixed[np.argmin(np.abs(np.asarray(c["referral_fractions"]) - 0.05))]))
            lines.append(f"| {method} | {label} | {fmt(float(fixed[0]))} | " + " | ".join(picks) + f" | {at5} |")
    lines += ["\nOOD detection (evaluate's OOD section, Mehrtash et al. 2020): AUROC [95 % bootstrap CI], "
              "n OOD / n in distribution:\n", "| method | class | n | " + " | ".join(SUBJECT_SCORES) + " |",
              "|---" * (3 + len(SUBJECT_SCORES)) + "|"]
    for method, block in summary.items():
        for label, c in block["classes"].items():
            auroc = c.get("ood", {}).get("auroc")
            if auroc:
                n = f"{auroc['ulabelled']['n_ood']} / {auroc['ulabelled']['n_in_distribution']}"
                lines.append(f"| {method} | {label} | {n} | " + " | ".join(interval(auroc[s], "auroc")
                                                                          for s in SUBJECT_SCORES) + " |")
    return lines


def pooled_correlations(model: str, summary: dict) -> list[str]:
    """Scores vs Dice pooled over classes and cases (not independent: organs of one scan), Spearman, per method."""
    lines = [f"\n{model}: scores vs Dice pooled over every class of every evaluated case (organs of one scan "
             "are not independent; for a larger n only). Spearman rho [95 % CI], p, n:\n",
             "| method | n | " + " | ".join(SUBJECT_SCORES) + " |", "|---" * (2 + len(SUBJECT_SCORES)) + "|"]
    for method, block in summary.items():
        cols = [c["per_case"] for c in block["classes"].values()]
        dice = np.concatenate([np.asarray(c["dice"], float) for c in cols])
        cells, n = [], 0
        for s in SUBJECT_SCORES:
            score = np.concatenate([np.asarray([np.nan if v is None else v for v in c[s]], float) for c in cols])
            corr = score_quality_correlation(score, dice)
            n = max(n, corr["n"])
            cells.append(f"{interval(corr, 'spearman')} p={fmt(corr.get('spearman_p'), 3)}")
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    return lines


def class_score(fact: dict, label: str, score: str) -> float:
    value = fact["scores"].get(label, {}).get(score)
    return np.nan if value is None else float(value)


def extra_tables(model: str, facts: dict, labels: list[str], methods=METHODS) -> list[str]:
    """Scores of every case (role named), Dice on OOD cases with a reference, lesion coverage, and AUROC of the
    'shift' cases (and, for the brain model, of OOD against id + lesion heads) computed here."""
    role = {case_name(v, model): v.roles[model] for v in cases_for(model)}
    lines = [f"\n#### {model}: every case's subject scores (first class: {labels[0]}), seconds per method run\n",
             "| case | role | method | seconds | " + " | ".join(SUBJECT_SCORES) + " | Dice (OOD, not pooled) | "
             "lesion inside foreground |", "|---" * (6 + len(SUBJECT_SCORES)) + "|"]
    for case, methods in facts.items():
        for method, fact in methods.items():
            dice = ", ".join(f"{k} {v:.2f}" for k, v in fact.get("dice", {}).items()) or "-"
            lines.append(f"| {case} | {role[case]} | {method} | {fact['seconds']:.1f} | "
                         + " | ".join(fmt(class_score(fact, labels[0], s)) for s in SUBJECT_SCORES)
                         + f" | {dice} | {fmt(fact.get('lesion_inside'), 2)} |")
    groups = [("shift", ("id",))] if model == CT else [("ood", ("id", "lesion"))]
    for positive, negative in groups:
        pos = [c for c, r in role.items() if r == positive]
        neg = [c for c, r in role.items() if r in negative]
        lines += [f"\nAUROC computed here: {positive} ({', '.join(pos)}) against {' + '.join(negative)} "
                  f"({', '.join(neg)}), class {labels[0]}; AUROC [95 % CI], permutation p:\n",
                  "| method | " + " | ".join(SUBJECT_SCORES) + " |", "|---" * (1 + len(SUBJECT_SCORES)) + "|"]
        for method in methods:
            cells = []
            for s in SUBJECT_SCORES:
                a = uncertain_side(s, np.array([class_score(facts[c][method], labels[0], s) for c in pos]))
                b = uncertain_side(s, np.array([class_score(facts[c][method], labels[0], s) for c in neg]))
                detection = ood_detection(a, b)
                cells.append(f"{interval(detection, 'auroc')} p={fmt(detection['auroc_p'], 3)}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ct_data.WORK)
    parser.add_argument("--samples", type=int, default=10, help="MC dropout samples (T)")
    parser.add_argument("--models", nargs="+", default=[BRAIN, CT], choices=[BRAIN, CT])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads spin against each other)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="for a quick try")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    start = time.process_time()
    volumes = load_volumes(args.cache)
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, CPU only, torch {torch.__version__}; "
          f"methods {', '.join(args.methods)}; mc_dropout T = {args.samples}, tta all declared flips\n")
    print("\n".join(dataset_table()))
    for model in args.models:
        work = args.cache / "bench_papers" / model
        if work.exists():
            raise SystemExit(f"{work} exists: remove it for a fresh run")
        facts = run_model(model, volumes, work, args.samples, args.methods)
        summary = evaluate(work, args.methods)
        labels = [v for k, v in load_model(model).card.labels.items() if int(k) != 0]
        print("\n".join(method_tables(model, summary) + pooled_correlations(model, summary)
                        + extra_tables(model, facts, labels, args.methods)))
    print(f"\nCPU time of this process: {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
