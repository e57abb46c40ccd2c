"""Benchmark: evaluation of one case with every measurement, and the referral curve against a naive
per-threshold loop, on a synthetic 128 x 256 x 256 case. Prints a Markdown table.

    python Testing/benchmarks/bench_evaluate.py [--shape 128 256 256] [--points 41]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SegUncertaintyLib.evaluation.evaluate import evaluate_case
from SegUncertaintyLib.evaluation.referral import dice, referral_curve


def synthetic_case(folder: Path, shape) -> Path:
    """A sphere, a prediction with boundary errors, probabilities and maps, written like `segment` does."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = np.sqrt(((z - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 3)) ** 2
                + ((x - shape[2] / 2) / (shape[2] / 3)) ** 2)
    prob = (1 / (1 + np.exp((r - 1) * 20 + rng.normal(0, 0.5, shape)))).astype(np.float32)
    ref = (r < 1).astype(np.uint8)
    ent = -(prob * np.log(prob + 1e-7) + (1 - prob) * np.log(1 - prob + 1e-7)) / np.log(2)
    case = folder / "case0"
    case.mkdir(parents=True)
    outputs = []
    for name, array, kind in (("segmentation", (prob > 0.5).astype(np.uint8), "labelmap"),
                              ("probability_fg", prob, "probability"), ("entropy", ent, "uncertainty"),
                              ("mutual_information", 0.3 * ent, "uncertainty"), ("variance", 0.1 * ent, "uncertainty")):
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(array.dtype)), str(case / f"{name}.nrrd"))
        entry = {"file": f"{name}.nrrd", "kind": kind}
        entry |= {"label": "fg"} if kind == "probability" else {"map": name} if kind == "uncertainty" else {}
        outputs.append(entry)
    (case / "manifest.json").write_text(json.dumps({"labels": {"0": "bg", "1": "fg"}, "outputs": outputs}))
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(folder / "case0_ref.nrrd"))
    return case


def naive_referral(u, pred, ref, fractions):
    """One full pass per point: threshold at the quantile, correct, Dice."""
    out = []
    for f in fractions:
        k = int(round(f * u.size))
        corrected = pred.copy()
        if k:
            top = np.argpartition(-u.ravel(), k - 1)[:k]
            corrected.ravel()[top] = ref.ravel()[top]
        out.append(dice(corrected, ref))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 256, 256])
    parser.add_argument("--points", type=int, default=41)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        case = synthetic_case(Path(tmp), args.shape)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        evaluate_case(case, Path(tmp) / "case0_ref.nrrd")
        full = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        u = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "entropy.nrrd")))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentation.nrrd"))) > 0
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / "case0_ref.nrrd"))) > 0
    fractions = np.linspace(0, 0.2, args.points)
    start = time.perf_counter()
    fast = referral_curve(u, pred, ref, fractions)["dice"]
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = naive_referral(u, pred, ref, fractions)
    t_slow = time.perf_counter() - start
    print(f"machine: {platform.machine()}, CPU; case {args.shape} (z,y,x), {args.points} referral points\n")
    print("| measurement | seconds | note |\n|---|---|---|")
    print(f"| evaluate_case, all measurements (3 maps) | {full:.1f} | peak RSS {peak:.0f} MiB "
          f"(before {before:.0f} MiB) |")
    print(f"| referral curve, one sort | {t_fast:.2f} | |")
    print(f"| referral curve, naive per point | {t_slow:.2f} | ratio naive/ours {t_slow / t_fast:.1f}x; "
          f"max Dice difference {np.abs(fast - slow).max():.2e} (tie order) |")


if __name__ == "__main__":
    main()
