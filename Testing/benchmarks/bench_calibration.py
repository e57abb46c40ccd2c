"""Semi-synthetic evidence for ``seguncertainty calibrate`` (issue #21 item 4): does the referral threshold
keep its guarantee, do the predicted-Dice intervals cover, which score detects failures?

    python Testing/benchmarks/bench_calibration.py [--cache Testing/scripts/_work] [--cases 60] [--splits 20]
                                                   [--samples 10] [--alpha 0.1] [--models brainmask-t1,...]
    python Testing/benchmarks/bench_calibration.py --models nnunet-tiny --cache /tmp/bench_nn

Data (semi-synthetic, said plainly): per bundled model, ``--cases`` labelled cases made from the real labelled
volumes the project already fetches (bench_papers' sources: MNI152 and Colin27 with their brain masks for
brainmask-t1; TotalSegmentator's two abdominal CTs with its organ labels for abdomen-ct-demo), each volume on
the model's grid, then one graded TorchIO corruption per case (noise, bias field, blur, lower resolution,
ghosting, motion, contrast; severity 1-4, cycled) after a mild random affine. Spatial transforms (the affine,
the lower resolution) move the label with the image (TorchIO applies them to LabelMaps); intensity ones
leave it. The cases are therefore not independent draws of patients: they are corrupted copies of 2 heads
or 2 abdomens, and every statistic below rests on that n.

nnunet-tiny (synthetic model, synthetic cases, said plainly): an nnU-Net v2 trained-model folder trained here
on CPU by Testing/support/nnunet_train.py (PlainConvUNet from nnunetv2's builder, 2 folds, each trained on its
own half of 24 lesion phantoms with its own seed, random flips; nnunetv2's preprocessing; nnunet_tiny's
checkpoint format), to show that whole-volume formats go through the same protocol. Its ``--cases`` cases are
fresh lesion phantoms (seeds disjoint from the training ones; random field of view, spacing, lesion size,
contrast and noise), each with the same graded TorchIO corruption as above. Method: ensemble+tta (2 folds x
``--flips`` mirrorings: no flip, then each axis alone for 4; nnU-Net's own inference taken apart into
samples); nnU-Net folders offer softmax, ensemble (folds > 1), tta (mirroring axes in the checkpoint) and
mc_dropout only with dropout in the plans, which this one has not.

Protocol: the cases run once through ``seguncertainty cohort`` (the card models: mc_dropout with ``--samples``;
nnunet-tiny: ensemble+tta; seed 0, no calibration); then ``--splits`` times, a random half calibrates (the
calibrate command's own ``fit_calibration``) and the other half tests: the realised missed-error fraction at
the threshold against alpha, the coverage of the predicted-Dice intervals against 1 - alpha, and the AURC
(risk = 1 - Dice) of each score against random and the oracle. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import brain_data  # noqa: E402
import ct_data  # noqa: E402

from SegUncertaintyLib.calibration.failure import failure_detection  # noqa: E402
from SegUncertaintyLib.calibration.predicted_dice import fit_dice_predictor  # noqa: E402
from SegUncertaintyLib.calibration.risk_control import missed_error_fraction  # noqa: E402
from SegUncertaintyLib.calibration.store import threshold_from_json  # noqa: E402
from SegUncertaintyLib.cli import main as cli_main  # noqa: E402
from SegUncertaintyLib.cohort.worklist import read_worklist  # noqa: E402
from SegUncertaintyLib.evaluation.calibrate import pair_references  # noqa: E402
from SegUncertaintyLib.evaluation.calibration_fit import (  # noqa: E402
    detection_score,
    fit_calibration,
    read_labelled_case,
)
from SegUncertaintyLib.inference.scores import SUBJECT_SCORES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for Testing.support
from Testing.support.nnunet_train import random_phantom, train_nnunet_tiny  # noqa: E402

BRAIN, CT, NNUNET_TINY = "brainmask-t1", "abdomen-ct-demo", "nnunet-tiny"
PHANTOM_SEED = 1000  # the benchmark's phantoms: seeds from here on, disjoint from the training phantoms' 0..
GRID_MM = {BRAIN: 2.0, CT: 3.0}
CORRUPTIONS = ("noise", "bias_field", "blur", "low_resolution", "ghosting", "motion", "contrast")


def on_grid(image: sitk.Image, spacing: float) -> sitk.Image:
    """The image (float32) on an isotropic ``spacing`` mm grid over the same extent, linear interpolation."""
    size = [max(1, round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), 0, sitk.sitkFloat32)


def base_volumes(model: str, cache: Path) -> dict[str, tuple[sitk.Image, sitk.Image]]:
    """name -> (image, label) on the model's grid: the real labelled volumes of bench_papers."""
    if model == BRAIN:
        pairs = {name: (t1, sitk.Cast(mask > 0.5, sitk.sitkUInt8)) for name, (t1, mask) in
                 (("mni152", brain_data.mni152()), ("colin27", brain_data.colin27()))}
    else:
        folder = ct_data.prepare(cache)
        train, train_labels = ct_data.training_ct(folder)
        _, dicom, dicom_labels = ct_data.heldout_ct(folder)
        pairs = {"ts_ct_train": (train, train_labels), "ts_ct_dicom": (dicom, dicom_labels)}
    out = {}
    for name, (image, label) in pairs.items():
        grid = on_grid(image, GRID_MM[model])
        out[name] = (grid, sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    return out


def case_bases(model: str, cache: Path):
    """i -> (base name, image, label) of case i: the real volumes in turn, or for nnunet-tiny a fresh phantom
    per case (made only when asked)."""
    if model == NNUNET_TINY:
        return lambda i: (f"phantom{PHANTOM_SEED + i}", *random_phantom(PHANTOM_SEED + i))
    bases = base_volumes(model, cache)
    names = sorted(bases)
    return lambda i: (names[i % len(names)], *bases[names[i % len(names)]])


def corruption(kind: str, severity: int, scale: float, offset: float):
    """The TorchIO transform of one graded corruption; ``scale`` (the image's intensity spread) and ``offset``
    (its minimum) make the intensity ones comparable between MR and CT."""
    import torchio as tio

    s = float(severity)
    if kind == "noise":
        return tio.RandomNoise(std=(0.08 * s * scale, 0.08 * s * scale))
    if kind == "bias_field":
        return tio.RandomBiasField(coefficients=(0.3 * s, 0.3 * s))
    if kind == "blur":
        return tio.RandomBlur(std=(1.5 * s, 1.5 * s))
    if kind == "low_resolution":
        return tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.0 + 1.5 * s, 1.0 + 1.5 * s))
    if kind == "ghosting":
        return tio.RandomGhosting(num_ghosts=(2, 2 + 2 * severity), intensity=(0.5 * s, 0.5 * s))
    if kind == "motion":
        return tio.RandomMotion(degrees=5.0 * s, translation=5.0 * s, num_transforms=3)
    gamma = (0.35 * s) * (1 if severity % 2 else -1)  # contrast: a gamma curve on the shifted intensities
    return tio.Compose([tio.Lambda(lambda x: x - offset), tio.RandomGamma(log_gamma=(gamma, gamma)),
                        tio.Lambda(lambda x: x + offset)])


def make_cases(model: str, cache: Path, n: int, images: Path, labels: Path) -> list[dict]:
    """Write ``n`` corrupted cases (images/<case>.nii.gz, labels/<case>.nii.gz); their descriptions."""
    import torch
    import torchio as tio

    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    base_of = case_bases(model, cache)
    names = [f"phantom{PHANTOM_SEED + i}" for i in range(n)] if model == NNUNET_TINY else None
    facts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            base = names[i] if names else base_of(i)[0]
            kind, severity = CORRUPTIONS[i % len(CORRUPTIONS)], 1 + (i // 7) % 4
            case = f"{model}_{i:03d}_{base}_{kind}{severity}"
            facts.append({"case": case, "base": base, "corruption": kind, "severity": severity})
            if (images / f"{case}.nii.gz").exists() and (labels / f"{case}.nii.gz").exists():
                continue
            _, image, label = base_of(i)
            sitk.WriteImage(image, f"{tmp}/i.nii.gz")
            sitk.WriteImage(label, f"{tmp}/l.nii.gz")
            array = sitk.GetArrayViewFromImage(image)
            lo, hi = np.percentile(array, [1, 99])
            torch.manual_seed(i)
            subject = tio.Subject(image=tio.ScalarImage(f"{tmp}/i.nii.gz"), label=tio.LabelMap(f"{tmp}/l.nii.gz"))
            transform = tio.Compose([tio.RandomAffine(scales=0.05, degrees=6, translation=4),
                                     corruption(kind, severity, float(hi - lo), float(array.min()))])
            out = transform(subject)
            out.image.save(images / f"{case}.nii.gz")
            out.label.save(labels / f"{case}.nii.gz")
    return facts


def score_matrix(cases, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The cases' subject scores of class ``name`` (n, k), NaN where undefined, and their empty flags (n,)."""
    x = np.array([[np.nan if c.scores[name][s] is None else c.scores[name][s] for s in SUBJECT_SCORES]
                  for c in cases], dtype=np.float64)
    return x, np.array([c.empty[name] for c in cases])


def detector_columns(cases, name: str) -> dict[str, np.ndarray]:
    """Each subject score as an uncertainty (larger = less sure), with calibrate's empty-prediction convention."""
    x, empty = score_matrix(cases, name)
    return {score: detection_score(score, x[:, j], empty) for j, score in enumerate(SUBJECT_SCORES)}


def split_statistics(cases, alpha: float, splits: int, failure_dice: float) -> dict:
    """Per split: calibrate on a random half, test on the other; the realised statistics per split."""
    rng = np.random.default_rng(0)
    names = list(cases[0].dice)
    out = {"missed": [], "threshold": [], "flagged_percent": [], "flagged_ml": [], "coverage": {n: [] for n in names},
           "width": {n: [] for n in names}, "aurc": {n: {} for n in names}}
    for split in range(splits):
        order = rng.permutation(len(cases))
        half = len(cases) // 2
        calib, test = [cases[i] for i in order[:half]], [cases[i] for i in order[half:]]
        doc = fit_calibration(calib, alpha, failure_dice=failure_dice, folds=5, seed=split)
        threshold = threshold_from_json(doc["referral"]["threshold"])
        out["threshold"].append(threshold)
        out["missed"].append(float(np.mean([missed_error_fraction(c.errors, threshold) for c in test])))
        flagged = [(c.uncertainty >= threshold) for c in test]
        out["flagged_percent"].append(float(np.mean([100 * f.mean() for f in flagged])))
        out["flagged_ml"].append(float(np.mean([f.sum() * c.voxel_ml for f, c in zip(flagged, test, strict=True)])))
        for name in names:
            block = doc["classes"][name]
            # a class absent from a case's reference has no Dice to predict (the library's 1 for empty vs empty
            # is a convention): per-class statistics use the test cases whose reference holds the class
            value = next(v for v, n in test[0].classes.items() if n == name)
            holding = [c for c in test if (c.reference == value).any()]
            if len(holding) < 2:
                continue
            training = block["predicted_dice"]["training"]  # the predictor a calibrated run refits from the file
            predictor = fit_dice_predictor(np.array(training["scores"], dtype=np.float64),
                                           np.array(training["empty"]), np.array(training["dice"]), alpha)
            value, interval = predictor.predict(*score_matrix(holding, name))
            actual = np.array([c.dice[name] for c in holding])
            lo, hi = interval[:, 0], interval[:, 1]
            out["coverage"][name].append(float(np.mean((lo <= actual) & (actual <= hi))))
            out["width"][name].append(float(np.mean(hi - lo)))
            columns = detector_columns(holding, name)
            columns["predicted_dice"] = -value
            for score, column in columns.items():
                out["aurc"][name].setdefault(score, []).append(failure_detection(column, actual, failure_dice))
    return out


def mean_se(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(v.size):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def method_of(model: str, args) -> str:
    return (f"ensemble+tta (2 folds x {args.flips} mirrorings)" if model == NNUNET_TINY
            else f"mc_dropout, T = {args.samples}")


def tables(model: str, cases, stats: dict, args, facts: list[dict]) -> list[str]:
    alpha = args.alpha
    lines = [f"### {model}", "", f"Method: {method_of(model, args)}." + (
        " Synthetic model (trained here on lesion phantoms) and synthetic cases (lesion phantoms with graded "
        "TorchIO corruptions)." if model == NNUNET_TINY else " Semi-synthetic cases (graded TorchIO corruptions "
        "of real labelled volumes)."), ""]
    value = {n: v for v, n in cases[0].classes.items()}
    dice_all = {name: np.array([c.dice[name] for c in cases if (c.reference == value[name]).any()])
                for name in cases[0].dice}
    lines.append("Cases (Dice where the reference holds the class): " + ", ".join(
        f"{name}: n = {d.size}, median {np.median(d):.3f} (range {d.min():.3f}-{d.max():.3f})"
        for name, d in dice_all.items()))
    by_kind = {}
    for fact, case in zip(facts, cases, strict=True):
        by_kind.setdefault(fact["corruption"], []).append(np.mean(list(case.dice.values())))
    lines.append("Mean Dice per corruption: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in by_kind.items()))
    splits = len(stats["missed"])
    lines += ["", f"| statistic ({splits} splits, n = {len(cases) // 2} calibration / {len(cases) - len(cases) // 2}"
              f" test) | mean ± SE over splits | target |", "|---|---|---|",
              f"| realised missed-error fraction at λ̂ | {mean_se(stats['missed'])} | ≤ α = {alpha} |",
              f"| splits with realised fraction > α | {np.mean(np.array(stats['missed']) > alpha):.2f} | "
              "(a per-split excess is allowed: the guarantee is on the mean) |",
              f"| threshold λ̂ | {mean_se(stats['threshold'])} | |",
              f"| flagged volume per test case, mL | {mean_se(stats['flagged_ml'])} | |",
              f"| flagged volume, % of the image | {mean_se(stats['flagged_percent'])} | |"]
    for name in stats["coverage"]:
        lines.append(f"| {name}: predicted-Dice interval coverage | {mean_se(stats['coverage'][name])} | "
                     f"≥ 1 − 2α = {1 - 2 * alpha:.2f} (CV+), typically 1 − α = {1 - alpha:.2f} |")
        lines.append(f"| {name}: mean interval width | {mean_se(stats['width'][name])} | |")
    lines += ["", "| class | score | AURC | random | oracle | E-AURC | failure AUROC |",
              "|---|---|---|---|---|---|---|"]
    for name, per_score in stats["aurc"].items():
        for score, results in per_score.items():
            lines.append(f"| {name} | {score} | {mean_se([r['aurc'] for r in results])} | "
                         f"{mean_se([r['random_aurc'] for r in results])} | "
                         f"{mean_se([r['oracle_aurc'] for r in results])} | "
                         f"{mean_se([r['e_aurc'] for r in results])} | "
                         f"{mean_se([r['failure_auroc'] for r in results])} |")
    return lines


def run(model: str, args) -> list[str]:
    work = Path(args.cache) / "bench_calibration" / model
    start = time.perf_counter()
    if model == NNUNET_TINY:  # trained once, kept in the cache
        folder = train_nnunet_tiny(work / "model", log=lambda line: print(line, file=sys.stderr))
        how = ["--model", str(folder), "--method", "ensemble+tta", "--samples", str(args.flips)]
    else:
        how = ["--model", model, "--method", "mc_dropout", "--samples", str(args.samples)]
    trained = time.perf_counter()
    facts = make_cases(model, Path(args.cache), args.cases, work / "images", work / "labels")
    made = time.perf_counter()
    images = [str(work / "images" / f"{f['case']}.nii.gz") for f in facts]
    code = cli_main(["cohort", *images, "--out", str(work / "cohort"), *how, "--maps", "entropy",
                     "--calibration", "none", "--no-overview", "--progress", "none", "--seed", "0"])
    if code != 0:
        raise SystemExit(f"cohort failed with exit {code}")
    segmented = time.perf_counter()
    rows = read_worklist(work / "cohort" / "worklist.csv")
    pairs, notes = pair_references(rows, work / "cohort", work / "labels")
    output_of = {Path(row["input"]).name.removesuffix(".nii.gz"): Path(row["output"]).name for row in rows}
    by_output = {case_dir.name: (case_dir, ref) for case_dir, ref in pairs}
    cases = [read_labelled_case(*by_output[output_of[f["case"]]]) for f in facts]
    stats = split_statistics(cases, args.alpha, args.splits, args.failure_dice)
    done = time.perf_counter()
    print(f"{model}: " + (f"model trained in {trained - start:.0f} s, " if model == NNUNET_TINY else "")
          + f"cases made in {made - trained:.0f} s, segmented in {segmented - made:.0f} s, "
          f"{args.splits} splits in {done - segmented:.0f} s", file=sys.stderr)
    lines = tables(model, cases, stats, args, facts)
    if args.temperature_voxels > 0:
        folders = [by_output[output_of[f["case"]]][0] for f in facts]
        lines += temperature_lines(model, how, cases, folders, args, work / "temperature")
    return lines


def temperature_lines(model: str, how: list[str], cases, folders: list[Path], args, work: Path) -> list[str]:
    """calibrate's own temperature step on every case (the passes' logits at up to --temperature-voxels box
    voxels per case, kept in ``work``): t on all cases, and NLL, top-label ECE and Dice on held-out folds."""
    from SegUncertaintyLib.core.options import SegmentOptions
    from SegUncertaintyLib.evaluation.temperature_fit import collect_logits, fit_run_temperature

    options = SegmentOptions(model=how[1], method=how[3], samples=int(how[5]), seed=0, device="cpu").check()
    start = time.perf_counter()
    collected = collect_logits(cases, folders, options, work, args.temperature_voxels)
    fitted = fit_run_temperature(collected, cases[0].classes, seed=0, cap=args.temperature_voxels)
    print(f"{model}: temperature in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    held = fitted["held_out"]
    lines = ["", f"Temperature (calibrate's own fit, {fitted['cases']} cases, {fitted['voxels']:,} box voxels, "
                 f"{held['folds']} held-out folds): t = {fitted['value']:.3f} on all cases "
                 f"(folds: {', '.join(f'{t:.3f}' for t in held['fold_temperatures'])})", "",
             "| held out | top-label NLL | top-label ECE | "
             + " | ".join(f"Dice {n}" for n in cases[0].classes.values()) + " |",
             "|---|---|---|" + "---|" * len(cases[0].classes)]
    for when in ("before", "after"):
        lines.append(f"| {when} | {held[when]['nll']:.4f} | {held[when]['ece']:.4f} | "
                     + " | ".join(f"{held[when]['dice'][n]:.3f}" for n in cases[0].classes.values()) + " |")
    return lines + [f"{note}" for note in fitted["notes"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(SCRIPTS / "_work"))
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--flips", type=int, default=4, help="nnunet-tiny: TTA mirrorings per fold (2-8)")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--failure-dice", type=float, default=0.8)
    parser.add_argument("--models", default=f"{BRAIN},{CT}")
    parser.add_argument("--temperature-voxels", type=int, default=0,
                        help="also fit calibrate's temperature on every case (re-runs the passes; 0: no)")
    args = parser.parse_args()
    print(f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; {args.cases} cases per model, "
          f"{args.splits} splits, alpha = {args.alpha}")
    for model in args.models.split(","):
        print("\n".join(["", *run(model, args)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
