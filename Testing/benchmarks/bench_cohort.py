"""Cohort throughput: cases per hour for N small volumes, per executor, against the naive way.

Naive way: N runs of ``seguncertainty segment VOLUME --method softmax`` (a subprocess each: start-up,
model load and one volume every time). Cohort: ``seguncertainty cohort`` with 1 and 2 local workers, Ray
on 2 workers and Dask on 2 workers (one process, one model load per worker, cluster start-up included).
The executor table runs the same segmentation through ``executors.run_tasks`` directly (no output files),
which isolates what the executors cost. Volumes: the bundled 2 mm sample T1 (90 x 108 x 90) with a little
noise each (distinct files, distinct sha256), model brainmask-t1, --method softmax.

Run: .venv/bin/python Testing/benchmarks/bench_cohort.py [--cases 20] [--skip-naive] [--executor-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "SegUncertaintyLib.cli"]
CONFIGS = [("local", 1), ("local", 2), ("ray", 2), ("dask", 2)]
_model = None


def make_volumes(folder: Path, n: int) -> list[Path]:
    import numpy as np
    import SimpleITK as sitk

    from SegUncertaintyLib.cli.segment import SAMPLE_IMAGE

    image = sitk.ReadImage(str(SAMPLE_IMAGE), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    paths = []
    for i in range(n):
        noisy = array + np.random.default_rng(i).normal(0, 0.01 * array.std(), array.shape).astype(np.float32)
        out = sitk.GetImageFromArray(noisy)
        out.CopyInformation(image)
        paths.append(folder / f"case{i:02d}.nii.gz")
        sitk.WriteImage(out, str(paths[-1]))
    return paths


def segment_task(item: dict) -> dict:
    """Executor-table task: brainmask-t1 loaded once per process, one volume segmented (softmax)."""
    global _model
    from SegUncertaintyLib.core.options import SegmentOptions
    from SegUncertaintyLib.inference.segment import segment_image
    from SegUncertaintyLib.io.images import read_image
    from SegUncertaintyLib.models.loader import load_model

    start = time.perf_counter()
    if _model is None:
        _model = load_model("brainmask-t1")
    out = segment_image(read_image(item["path"]), _model, SegmentOptions(method="softmax"))
    return {"status": "done", "seconds": time.perf_counter() - start, "pid": os.getpid(),
            "dpw": out.scores["classes"]["brain"]["dpw"]}


def row(name: str, n: int, wall: float, naive_per_case: float | None) -> str:
    per_case = wall / n
    vs = f"{naive_per_case / per_case:.2f}x" if naive_per_case else "-"
    return f"| {name} | {wall:.1f} | {3600 * n / wall:.0f} | {per_case:.2f} | {vs} |"


def executor_table(paths: list[Path]) -> None:
    from bench_cohort import segment_task as task  # by module name, so that workers import it

    from SegUncertaintyLib.cohort.executors import run_tasks

    items = [{"path": str(p)} for p in paths]
    print(f"\nexecutors.run_tasks, {len(paths)} volumes, no files written (wall includes cluster start-up "
          "and each worker's import and model load):\n")
    print("| executor | workers | wall s | cases/hour | s/case | worker s/case (mean) | processes |")
    print("|---|---|---|---|---|---|---|")
    for executor, workers in CONFIGS:
        start = time.perf_counter()
        results = dict(run_tasks(task, items, executor, workers))
        wall = time.perf_counter() - start
        assert all(r["status"] == "done" for r in results.values()), results
        mean = sum(r["seconds"] for r in results.values()) / len(results)
        pids = len({r["pid"] for r in results.values()})
        print(f"| {executor} | {workers} | {wall:.1f} | {3600 * len(items) / wall:.0f} | {wall / len(items):.2f} | "
              f"{mean:.2f} | {pids} |", flush=True)


def command_table(paths: list[Path], folder: Path, naive: bool) -> None:
    common = ["--method", "softmax", "--progress", "none"]
    n = len(paths)
    print(f"\nseguncertainty commands, {n} volumes (outputs written: segmentation, maps, scores, overview):\n")
    print("| way | wall s | cases/hour | s/case | speed-up over naive |\n|---|---|---|---|---|")
    naive_per_case = None
    if naive:
        start = time.perf_counter()
        for i, path in enumerate(paths):
            subprocess.run(CLI + ["segment", str(path), "--out", str(folder / "naive" / str(i)), *common],
                           check=True, capture_output=True)
        wall = time.perf_counter() - start
        naive_per_case = wall / n
        print(row(f"naive: {n} x segment (a process each)", n, wall, None), flush=True)
    for executor, workers in CONFIGS:
        out = folder / f"cohort-{executor}-{workers}"
        start = time.perf_counter()
        subprocess.run(CLI + ["cohort", *map(str, paths), "--out", str(out), "--executor", executor,
                              "--workers", str(workers), *common], check=True, capture_output=True)
        wall = time.perf_counter() - start
        print(row(f"cohort --executor {executor} --workers {workers}", n, wall, naive_per_case), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--executor-only", action="store_true", help="only the executors.run_tasks table")
    parser.add_argument("--command-only", action="store_true", help="only the seguncertainty commands table")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])  # for workers
    sys.path.insert(0, str(HERE))
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU only; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_volumes(Path(tmp), args.cases)
        if not args.command_only:
            executor_table(paths)
        if not args.executor_only:
            command_table(paths, Path(tmp), naive=not args.skip_naive)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
