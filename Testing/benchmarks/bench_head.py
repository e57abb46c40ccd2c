"""End to end on a 1 mm-class head: ``seguncertainty segment`` per method, before issue #23 (torch fp32 at the
commit ``--before``) and now (torch fp32 and ``--backend auto``). Issue #23 item 6's targets: auto >= 2x
today's fp32 eager for mc_dropout, >= 3x for softmax and ensemble, with p99 |d entropy| <= 0.02 and Dice >= 0.99
against the fp32 run with the same seed.

    python Testing/benchmarks/bench_head.py [--cache Testing/scripts/_work] [--spacing 0.85] [--rounds 3]
                                            [--before 286e5b8] [--image PATH]

The head is Colin27's T1 (Debian mricron-data, 1 mm, 181 x 217 x 181) resampled to ``--spacing`` mm (0.85 mm:
about 11.6 M voxels). Each run is the command line in a fresh process with the default options (imports, model
load, reading, the passes, resampling back, writing); "before" runs the same command from a git worktree of
``--before`` (default: main just before issue #23's first merge) with the same Python environment. Every
configuration is run once to warm its caches (load-time checks; the probe of ``auto``, whose cost is reported
apart); then each round runs every configuration in turn, and the median is shown. Agreement is auto against
torch fp32 now, same seed (the random stream changed in #23, so "before" is compared in time only). Prints a
Markdown table with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import brain_data  # noqa: E402

METHODS = ("softmax", "mc_dropout", "ensemble", "tta")


def head(cache: Path, spacing: float) -> Path:
    path = cache / f"colin27_t1_{spacing:g}mm.nii.gz"
    if not path.exists():
        t1, _ = brain_data.colin27()
        size = [round(n * s / spacing) for n, s in zip(t1.GetSize(), t1.GetSpacing(), strict=True)]
        image = sitk.Resample(t1, size, sitk.Transform(), sitk.sitkLinear, t1.GetOrigin(), (spacing,) * 3,
                              t1.GetDirection(), 0.0, sitk.sitkFloat32)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path), True)
    return path


ROOT = Path(__file__).resolve().parents[2]


def segment(image: Path, out: Path, method: str, backend: str | None, home: Path, code: Path = ROOT) -> float:
    """Seconds of one ``segment`` command run from the source tree ``code`` (backend None: the option left out,
    as before it existed)."""
    env = {**os.environ, "SEGUNCERTAINTY_HOME": str(home), "PYTHONPATH": str(code)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "SegUncertaintyLib.cli", "segment", str(image), "--out", str(out),
                    "--method", method, "--progress", "none", "--seed", "0",
                    *(["--backend", backend] if backend else [])], env=env, check=True, stdout=subprocess.DEVNULL,
                   cwd=code)
    return time.perf_counter() - start


# one case after another in one process (a cohort worker, the Slicer module): load once, run once to warm, then
# time segment_image + write_outputs per case; prints the median seconds as JSON
IN_PROCESS = """
import json, sys, tempfile, time
import SimpleITK as sitk
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models.loader import load_model
from SegUncertaintyLib.results.run_folder import write_outputs
image_path, method, backend, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = SegmentOptions(method=method, seed=0, **({} if backend == "none" else {"backend": backend}))
model = load_model("brainmask-t1")
times = []
with tempfile.TemporaryDirectory() as tmp:
    for r in range(rounds + 1):
        start = time.perf_counter()
        image = sitk.ReadImage(image_path)
        outputs = segment_image(image, model, options)
        write_outputs(outputs, f"{tmp}/{r}", model.description, image_path, options)
        times.append(time.perf_counter() - start)
print(json.dumps(sorted(times[1:])[len(times[1:]) // 2]))
"""


def per_case(image: Path, method: str, backend: str | None, home: Path, code: Path, rounds: int) -> float:
    """Median seconds per case in one long-lived process (:data:`IN_PROCESS`) run from the source tree ``code``."""
    env = {**os.environ, "SEGUNCERTAINTY_HOME": str(home), "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(image), method, backend or "none", str(rounds)],
                          env=env, check=True, capture_output=True, text=True, cwd=code)
    return float(done.stdout.strip().splitlines()[-1])


def worktree(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref], check=True,
                   capture_output=True)
    return folder


def agreement(a: Path, b: Path) -> tuple[float, float]:
    """(p99 |d entropy|, Dice of the foreground) between two run folders."""
    def read(folder: Path, name: str) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}.nrrd")))
    entropy = np.abs(read(a, "entropy") - read(b, "entropy"))
    sa, sb = read(a, "segmentation") > 0, read(b, "segmentation") > 0
    return float(np.percentile(entropy, 99)), float(2 * (sa & sb).sum() / max(1, sa.sum() + sb.sum()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(SCRIPTS / "_work"))
    parser.add_argument("--spacing", type=float, default=0.85)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--before", default="286e5b8", help="the commit timed as 'before' (torch fp32)")
    parser.add_argument("--image", default=None, help="time this image instead of the head (e.g. the bundled "
                        "sample, SegUncertaintyLib/sample/colin27_t1_2mm.nii.gz)")
    args = parser.parse_args()
    image = Path(args.image).resolve() if args.image else head(Path(args.cache), args.spacing)
    voxels = np.prod(sitk.ReadImage(str(image)).GetSize())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = worktree(args.before, tmp / "before")
        try:
            configs = {"before": (None, tmp / "home-before", before), "torch": ("torch", tmp / "home", ROOT),
                       "auto": ("auto", tmp / "home", ROOT)}
            warm = {name: segment(image, tmp / f"warm-{name}", "mc_dropout", backend, home, code)
                    for name, (backend, home, code) in configs.items()}
            print(f"{image.name}: {voxels / 1e6:.1f} M voxels; first run (caches made: load-time checks, auto's "
                  f"probe) before {warm['before']:.1f} s, torch {warm['torch']:.1f} s, auto {warm['auto']:.1f} s; "
                  f"load average {os.getloadavg()[0]:.1f}\n")
            print("| method | before: torch fp32 at " + args.before + " (s) | now: torch fp32 (s) | now: auto (s) "
                  "| auto vs before | auto vs torch now | p99 abs d entropy | Dice |")
            print("|---|---|---|---|---|---|---|---|")
            for method in args.methods.split(","):
                times = {name: [] for name in configs}
                for r in range(args.rounds):
                    for name, (backend, home, code) in configs.items():
                        times[name].append(segment(image, tmp / f"{method}-{name}-{r}", method, backend, home, code))
                d_entropy, dice = agreement(tmp / f"{method}-torch-0", tmp / f"{method}-auto-0")
                b, t, a = (float(np.median(times[name])) for name in configs)
                print(f"| {method} | {b:.1f} | {t:.1f} | {a:.1f} | {b / a:.2f}x | {t / a:.2f}x | {d_entropy:.2g} "
                      f"| {dice:.4f} |", flush=True)
                for r in range(1, args.rounds):  # the disk: about 250 MB per run
                    for name in configs:
                        shutil.rmtree(tmp / f"{method}-{name}-{r}")
            print("\nPer case in one long-lived process (cohort worker, Slicer): model loaded once, one case to "
                  "warm, then the median of the rounds (read + segment_image + write_outputs)\n")
            print("| method | before (s) | now: torch fp32 (s) | now: auto (s) | auto vs before | auto vs torch now |")
            print("|---|---|---|---|---|---|")
            for method in args.methods.split(","):
                b, t, a = (per_case(image, method, backend, home, code, args.rounds)
                           for backend, home, code in configs.values())
                print(f"| {method} | {b:.2f} | {t:.2f} | {a:.2f} | {b / a:.2f}x | {t / a:.2f}x |", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
