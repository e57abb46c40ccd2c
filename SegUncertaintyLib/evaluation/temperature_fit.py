"""``calibrate``'s temperature: every pass's logits of the calibration cases at the voxels of paper 004's
dilated box around reference and prediction, t fitted on them, and its effect measured on held-out folds.

Voxels: the bounding box of every foreground voxel of the reference or of the case's prediction (all
classes together), dilated 8 mm in-plane and 2 slices out of plane (evaluation/quality.py); at most
``cap`` of them per case (default CAP), drawn uniformly with the run's seed. Outside the box reference and
prediction are both background. Every pass's logits there (inference/pass_logits.py: the run's own passes,
re-run on the case's input) are kept as float16 in ``<work>/<case>.npz``, reused while the weights, method,
samples, seed and cap are unchanged.

Fit: t minimises the NLL of the mean predictive probability (1/T) sum_s softmax(z_s / t) over the pooled
voxels of all cases (calibration/temperature.py). Held out (cross-fitting, K = min(FOLDS, n) folds of
cases): each case at t = 1 (before) and at the t of its fold, fitted without it (after): pooled NLL (nats),
top-label ECE and reliability bins (evaluation/calibration.py, Mehrtash et al. 2020; netcal's ECE in the
tests), and each class's Dice on the case's sampled voxels (argmax of the mean probability: with T > 1
passes the temperature may change it; an estimate of the box's Dice when the box held more than ``cap``
voxels), averaged over cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..calibration.temperature import BOUNDS, cross_fitted_temperatures, fit_temperature, mean_probability, nll
from ..core.errors import InputImageError
from ..core.files import read_json_object
from .calibration import TOP_LABEL_EDGES, BinStats
from .quality import dilated_foreground_box
from .referral import dice

CAP, FOLDS = 20000, 5
BEFORE_AFTER = ("evaluate's temperature columns: temperature = the t the run applied (its calibration's; 1 without); "
                "nll_toplabel_box and ece_toplabel_box are after it (the run's probabilities); *_toplabel_box_t1 are "
                "before it, exact only for a single pass (softmax(t ln p) undoes softmax(z / t)); with T > 1 passes "
                "the mean of tempered softmaxes cannot be undone without every pass's logits, which runs do not keep "
                "(NaN; calibrate's report gives held-out before/after on its cases)")
REGION = ("bounding box of the reference and the prediction (all foreground classes), dilated 8 mm in-plane and "
          "2 slices out of plane (paper 004)")


def case_region(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """(z, y, x) bool: the dilated box around the foreground of ``prediction`` or ``reference``."""
    return dilated_foreground_box((prediction != 0) | (reference != 0), spacing_zyx)


def collect_logits(cases: list, folders: list[Path], options, work: Path, cap: int = CAP,
                   cancelled=None) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(logits (T, C, N) float16, labels (N,), kind) per labelled case (calibration_fit.LabelledCase, with
    its case folder), from ``<work>/<case>.npz`` when current, else by re-running the passes."""
    from ..inference.pass_logits import collect_pass_logits
    from ..io.images import read_image
    from ..models.loader import load_model

    work.mkdir(parents=True, exist_ok=True)
    model, out = None, []
    for case, folder in zip(cases, folders, strict=True):
        manifest = read_json_object(folder / "manifest.json", "manifest", InputImageError)
        key = json.dumps({"weights": [m["sha256"] for m in manifest["model"]["members"]], "method": options.method,
                          "samples": options.samples, "seed": options.seed, "overlap": options.overlap, "cap": cap})
        path = work / f"{folder.name}.npz"
        if path.is_file():
            with np.load(path) as stored:
                if str(stored["key"]) == key:
                    out.append((stored["logits"], stored["labels"], str(stored["kind"])))
                    continue
        if model is None:
            model = load_model(options.model)
        settings = manifest["settings"]
        image = read_image(settings["input_resolved"], settings.get("dicom_series"))
        region = case_region(case.prediction, case.reference, case.spacing)
        got = collect_pass_logits(image, model, options, region, case.reference, cap, cancelled)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, logits=got.logits, labels=got.labels, kind=got.kind, key=key)
        tmp.replace(path)
        out.append((got.logits, got.labels, got.kind))
    return out


def _reliability(stats: BinStats) -> dict:
    keep = stats.count > 0
    return {"lower": TOP_LABEL_EDGES[:-1][keep].tolist(), "upper": TOP_LABEL_EDGES[1:][keep].tolist(),
            "confidence": (stats.sum_p[keep] / stats.count[keep]).tolist(),
            "accuracy": (stats.sum_y[keep] / stats.count[keep]).tolist(), "count": stats.count[keep].tolist()}


def fit_run_temperature(collected: list[tuple[np.ndarray, np.ndarray, str]], classes: dict[int, str],
                        folds: int = FOLDS, seed: int = 0, cap: int = CAP) -> dict:
    """The calibration file's ``temperature``: the value fitted on every case and the held-out comparison."""
    logits, labels = [z for z, _, _ in collected], [y for _, y, _ in collected]
    t = fit_temperature(logits, labels)
    fold, fold_t = cross_fitted_temperatures(logits, labels, folds, seed)
    held = {"before": BinStats.empty(), "after": BinStats.empty()}
    dices = {"before": {name: [] for name in classes.values()}, "after": {name: [] for name in classes.values()}}
    for z, y, f in zip(logits, labels, fold, strict=True):
        for when, temperature in (("before", 1.0), ("after", float(fold_t[f]))):
            p = mean_probability(z, temperature)
            held[when] = held[when] + BinStats.top_label(p, y)
            predicted = p.argmax(0)
            for value, name in classes.items():
                dices[when][name].append(dice(predicted == value, y == value))
    n_voxels = sum(y.size for y in labels)

    def pooled_nll(temperature: float) -> float:  # on the voxels t was fitted on (not held out)
        return sum(nll(z, y, temperature) * y.size for z, y in zip(logits, labels, strict=True)) / n_voxels

    lo, hi = BOUNDS
    at_bound = ([f"t = {t:.4g} lies at the searched range's end [{lo}, {hi}]: the NLL keeps falling beyond it "
                 "(labels nearly independent of the logits?)"] if not lo * 1.01 < t < hi / 1.01 else [])
    summary = {when: {"nll": stats.nll(), "ece": stats.ece(), "reliability": _reliability(stats),
                      "dice": {name: float(np.mean(v)) for name, v in dices[when].items()}}
               for when, stats in held.items()}
    return {
        "value": t, "nll_fitted_cases": {"before": pooled_nll(1.0), "after": pooled_nll(t)},
        "definition": "every pass's logits divided by t before the softmax and the mean over passes; t minimises "
                      "the NLL of the mean predictive probability",
        "notes": at_bound, "kind": collected[0][2], "region": REGION, "cap_per_case": cap,
        "cases": len(collected), "voxels": n_voxels,
        "held_out": {"folds": int(fold_t.size), "fold_temperatures": fold_t.tolist(), "seed": seed,
                     "ece": "top-label, 10 bins ((m-1)/10, m/10] (Mehrtash et al. 2020)",
                     "dice": "per class on each case's sampled voxels, mean over cases", **summary},
    }


def _number(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4g}"


def temperature_report(temperature: dict, out: Path) -> list[str]:
    """report.md's lines on the temperature, and its reliability diagram ``out``/reliability_temperature.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = temperature["held_out"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="calibrated")
    for when, style in (("before", "o-"), ("after", "s-")):
        r = held[when]["reliability"]
        ax.plot(r["confidence"], r["accuracy"], style, label=f"{when} (ECE {_number(held[when]['ece'])})")
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_title("Held-out reliability, temperature scaling")
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "reliability_temperature.png", dpi=100)
    plt.close(fig)
    lines = ["## Temperature scaling", "",
             f"t = {temperature['value']:.4g}: {temperature['definition']}. Fitted on {temperature['voxels']} voxels "
             f"({temperature['kind']}) of {temperature['cases']} cases, at most {temperature['cap_per_case']} per case "
             f"in the {temperature['region']}.", "",
             *[line for n in temperature.get("notes", []) for line in (f"- Note: {n}", "")],
             f"Held out ({held['folds']}-fold cross-fitting over cases; fold temperatures "
             + ", ".join(f"{v:.4g}" for v in held["fold_temperatures"]) + "):", "",
             "| | NLL (nats) | top-label ECE | " + " | ".join(f"Dice {n}" for n in held["before"]["dice"]) + " |",
             "|---|---|---|" + "---|" * len(held["before"]["dice"])]
    for when in ("before", "after"):
        lines.append(f"| {when} | {_number(held[when]['nll'])} | {_number(held[when]['ece'])} | "
                     + " | ".join(_number(v) for v in held[when]["dice"].values()) + " |")
    lines += ["", f"Dice: {held['dice']}. ![reliability](reliability_temperature.png)", ""]
    return lines


def before_temperature_columns(manifest: dict, everything: np.ndarray, label: np.ndarray, box: np.ndarray) -> dict:
    """A case's ``temperature`` and top-label NLL and ECE in ``box`` before it (BEFORE_AFTER): ``everything``
    (C, z, y, x) the run's mean probabilities (after the temperature), ``label`` the reference classes."""
    t = float(manifest.get("settings", {}).get("calibration", {}).get("temperature", 1.0))
    if t == 1.0:
        stats = BinStats.top_label(everything, label, box)
    elif manifest.get("n_samples") == 1:
        with np.errstate(divide="ignore"):
            z = t * np.log(everything[:, box])
        z -= z.max(0, keepdims=True)
        p = np.exp(z)
        stats = BinStats.top_label(p / p.sum(0, keepdims=True), label[box])
    else:
        return {"temperature": t, "nll_toplabel_box_t1": np.nan, "ece_toplabel_box_t1": np.nan}
    return {"temperature": t, "nll_toplabel_box_t1": stats.nll(), "ece_toplabel_box_t1": stats.ece()}
