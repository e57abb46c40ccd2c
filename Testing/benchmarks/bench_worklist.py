"""Benchmark: stepping through a cohort's worklist in the Slicer module's glue (SegUncertaintyMRML.cohort_scene) in a
real MRML scene (slicer-core): the time to step to a case (input + results loaded on demand, the case left
removed) and the image memory the scene holds after each step, against the naive way (import every case and
keep it); and the edit check (fingerprint, read in place) against hashing masks exported through
slicer.util.arrayFromSegmentBinaryLabelmap. Real `segment` run folders of the threshold model on spheres.

    python Testing/benchmarks/bench_worklist.py [--shape 128 256 256] [--cases 4]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "SegUncertainty")]  # Testing.support; the module's SegUncertaintyMRML
import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
from SegUncertaintyMRML import results, segments, volumes  # noqa: E402
from SegUncertaintyMRML.cohort_scene import CohortWorklist, fingerprint  # noqa: E402

from SegUncertaintyLib import cli  # noqa: E402
from SegUncertaintyLib.cohort.worklist import COLUMNS, write_csv_atomic  # noqa: E402
from Testing.support import slicer_headless  # noqa: E402
from Testing.support.phantoms import sphere_phantom  # noqa: E402
from Testing.support.tiny_models import write_threshold_model  # noqa: E402


def make_cohort(folder: Path, shape: tuple[int, int, int], n: int) -> Path:
    model = write_threshold_model(folder / "model")
    rows = []
    for k in range(n):
        image = folder / "inputs" / f"case{k}.nrrd"
        image.parent.mkdir(parents=True, exist_ok=True)
        size = (shape[2], shape[1], shape[0])  # (x, y, z)
        sitk.WriteImage(sphere_phantom(size=size, spacing=(1.0, 1.0, 1.0), radius_mm=30.0 + 5 * k,
                                       origin=(0.0, 0.0, 0.0)), str(image))
        assert cli.main(["segment", str(image), "--model", str(model), "--samples", "4", "--out",
                         str(folder / f"case{k}"), "--progress", "none", "--no-overview"]) == 0
        rows.append({"rank": str(k + 1), "case": f"case{k}", "status": "done", "input": str(image),
                     "output": f"case{k}"})
    write_csv_atomic(folder / "worklist.csv", rows, list(COLUMNS))
    return folder / "worklist.csv"


def image_mib(scene) -> float:
    """Image data the scene's volume nodes hold, MiB."""
    return sum(n.GetImageData().GetActualMemorySize() for n in slicer.util.getNodesByClass("vtkMRMLVolumeNode", scene)
               if n.GetImageData() is not None) / 1024.0


def naive_fingerprint(segmentation_node, reference_volume) -> str:
    digest = hashlib.sha256()
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        mask = segments.segment_mask(segmentation_node, segmentation.GetNthSegmentID(index), reference_volume)
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 256, 256], help="(k, j, i) voxels")
    parser.add_argument("--cases", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_worklist_") as tmp:
        run(Path(tmp), args)


def run(folder: Path, args) -> None:
    start = time.perf_counter()
    path = make_cohort(folder / "cohort", tuple(args.shape), args.cases)
    print(f"# {args.cases} cases of {args.shape[0]} x {args.shape[1]} x {args.shape[2]} voxels written in "
          f"{time.perf_counter() - start:.0f} s; {platform.machine()}, {platform.python_version()}")

    scene = slicer_headless.new_scene(folder / "home")
    worklist = CohortWorklist(path)
    ours = []
    for k in range(args.cases):
        seconds, nodes = timed(worklist.load_case, scene)
        ours.append((seconds, image_mib(scene)))
        if k == 0:  # best of 5
            fp_s = min(timed(fingerprint, nodes.run.segmentation)[0] for _ in range(5))
            naive_fp_s = min(timed(naive_fingerprint, nodes.run.segmentation, nodes.volume)[0] for _ in range(5))
        worklist.step(+1)
    worklist.unload_all(scene)

    scene = slicer_headless.new_scene(folder / "home2")
    naive = []
    for k in range(args.cases):  # the naive way: import every case and keep it
        def load(k=k):
            volume = volumes.read_volume(scene, folder / "cohort" / "inputs" / f"case{k}.nrrd", f"case{k}")
            return results.import_results(scene, folder / "cohort" / f"case{k}", volume)
        seconds, _ = timed(load)
        naive.append((seconds, image_mib(scene)))

    print("\n| step | load on demand, s | scene images, MiB | naive (keep all), s | naive scene images, MiB |")
    print("|---|---|---|---|---|")
    for k, ((s1, m1), (s2, m2)) in enumerate(zip(ours, naive, strict=True)):
        print(f"| {k + 1} | {s1:.2f} | {m1:.0f} | {s2:.2f} | {m2:.0f} |")
    print(f"\nedit check (fingerprint of the segmentation): in place {fp_s * 1000:.2f} ms, "
          f"through arrayFromSegmentBinaryLabelmap {naive_fp_s * 1000:.1f} ms (best of 5)")


if __name__ == "__main__":
    main()
