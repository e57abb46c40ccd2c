"""The maps' Monte Carlo error against T, and the T that ``--tolerance`` picks (issue #23 item 4, item 6).

    python Testing/benchmarks/bench_mc_error.py [--samples 5,10,20,40,80] [--tolerances 0.05,0.02,0.01]
                                                [--backend torch]

On the bundled sample (Colin27 T1, 2 mm) with brainmask-t1, mc_dropout, seed 0, in-process with the command
line's own call (segment_image): scores.json's ``monte_carlo_error`` (99th percentile inside the segment's box
dilated 10 mm, on the model grid: the mean probability's standard error and the entropy's infinitesimal-
jackknife standard error) for each fixed T, then the T each ``--tolerance`` stops at (rounds of samples until
the entropy's percentile is at most the tolerance, at most ``--max-samples``). Prints Markdown tables; the
error does not depend on the machine's load, the seconds do.
"""

from __future__ import annotations

import argparse
import math
import time

import SimpleITK as sitk

from SegUncertaintyLib.cli.segment import SAMPLE_IMAGE
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models.loader import load_model


def run(model, image, samples: int, backend: str, tolerance: float | None = None) -> tuple[dict, float]:
    options = SegmentOptions(method="mc_dropout", samples=samples, seed=0, device="cpu", overview=False,
                             maps=("entropy",), tolerance=tolerance, backend=backend).check()
    start = time.perf_counter()
    outputs = segment_image(image, model, options)
    return outputs.scores["monte_carlo_error"], time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="5,10,20,40,80")
    parser.add_argument("--tolerances", default="0.05,0.02,0.01")
    parser.add_argument("--max-samples", type=int, default=640)
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    model = load_model("brainmask-t1")
    image = sitk.ReadImage(str(SAMPLE_IMAGE), sitk.sitkFloat32)
    print(f"brainmask-t1 on {SAMPLE_IMAGE.name}, mc_dropout, seed 0, backend {args.backend}\n")
    print("| T | p99 SE of the mean probability | p99 SE of the entropy | entropy SE x sqrt(T) | seconds |")
    print("|---|---|---|---|---|")
    for t in (int(v) for v in args.samples.split(",")):
        error, seconds = run(model, image, t, args.backend)
        print(f"| {t} | {error['probability']:.4f} | {error['entropy']:.4f} | "
              f"{error['entropy'] * math.sqrt(t):.3f} | {seconds:.1f} |", flush=True)
    print("\n| --tolerance | T used | rounds | p99 SE of the entropy reached | seconds |")
    print("|---|---|---|---|---|")
    for tolerance in (float(v) for v in args.tolerances.split(",")):
        error, seconds = run(model, image, args.max_samples, args.backend, tolerance)
        print(f"| {tolerance} | {error['n_samples']} | {error.get('rounds')} | {error['entropy']:.4f} | "
              f"{seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
