"""End to end on a 1 mm-class head: ``seguncertainty segment`` per method, torch fp32 against ``--backend auto``
(issue #23 item 6's targets: auto >= 2x for mc_dropout, >= 3x for softmax and ensemble, with p99 |d entropy| <=
0.02 and Dice >= 0.99 against the fp32 run with the same seed).

    python Testing/benchmarks/bench_head.py [--cache Testing/scripts/_work] [--spacing 0.85] [--rounds 1]

The head is Colin27's T1 (Debian mricron-data, 1 mm, 181 x 217 x 181) resampled to ``--spacing`` mm (0.85 mm:
about 11.6 M voxels). Each run is the command line in a fresh process (imports, model load, reading, the
passes, resampling back, writing every output compressed); the probe of ``auto`` is made once beforehand and
cached (its cost is reported apart). Prints a Markdown table; the machine's load average is printed with it.
"""

from __future__ import annotations

import argparse
import os
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


def segment(image: Path, out: Path, method: str, backend: str, home: Path) -> float:
    env = {**os.environ, "SEGUNCERTAINTY_HOME": str(home)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "SegUncertaintyLib.cli", "segment", str(image), "--out", str(out),
                    "--method", method, "--backend", backend, "--progress", "none", "--seed", "0"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


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
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    image = head(Path(args.cache), args.spacing)
    voxels = np.prod(sitk.ReadImage(str(image)).GetSize())
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        probe = segment(image, Path(tmp) / "probe", "softmax", "auto", home)  # pays the probe, then cached
        print(f"{image.name}: {voxels / 1e6:.1f} M voxels; first auto run (probe included) {probe:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f}\n")
        print("| method | torch fp32 (s) | auto (s) | speed-up | p99 abs d entropy | Dice |")
        print("|---|---|---|---|---|---|")
        for method in args.methods.split(","):
            times = {"torch": [], "auto": []}
            for r in range(args.rounds):
                for backend in ("torch", "auto"):
                    times[backend].append(segment(image, Path(tmp) / f"{method}-{backend}-{r}", method, backend,
                                                  home))
            d_entropy, dice = agreement(Path(tmp) / f"{method}-torch-0", Path(tmp) / f"{method}-auto-0")
            t, a = np.median(times["torch"]), np.median(times["auto"])
            print(f"| {method} | {t:.1f} | {a:.1f} | {t / a:.2f}x | {d_entropy:.2g} | {dice:.4f} |", flush=True)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
