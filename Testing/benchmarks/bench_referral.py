"""Benchmark: from a threshold change to updated referral statistics and "Flagged for review" segment,
on a 128 x 256 x 256 (k, j, i) map in a real MRML scene (slicer-core), against the naive way in the same
run (full recount of the volume plus slicer.util.updateSegmentBinaryLabelmapFromArray). Prints a table.

    python Testing/benchmarks/bench_referral.py [--shape 128 256 256] [--steps 20]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "SegUncertainty")]  # Testing.support; the module's SegUncertaintyMRML
import slicer  # noqa: E402
from SegUncertaintyMRML import flagged_voxels, regions, segments, volumes  # noqa: E402

from Testing.support import slicer_headless  # noqa: E402


def phantom(shape, seed=0):
    """A sphere segmentation and an entropy-like map peaking on its boundary, with noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = np.sqrt(((k - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((j - shape[1] / 2) / (shape[1] / 3)) ** 2
                + ((i - shape[2] / 2) / (shape[2] / 3)) ** 2)
    uncertainty = np.exp(-(((r - 1) / 0.08) ** 2)) + rng.uniform(0, 0.05, shape)
    return (r < 1).astype(np.uint8), np.clip(uncertainty, 0, 1).astype(np.float32)


def naive_update(values, structure, segmentation, segment_id, reference, threshold):
    """What a first implementation would do: rescan the volume and go through a temporary labelmap node."""
    flagged = values > threshold
    voxels = int(np.count_nonzero(flagged))
    inside = int(np.count_nonzero(flagged & structure))
    slicer.util.updateSegmentBinaryLabelmapFromArray(flagged.astype(np.uint8), segmentation, segment_id, reference)
    return voxels, inside


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1000.0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 256, 256])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    scene = slicer_headless.new_scene(Path(tempfile.mkdtemp()))
    structure, values = phantom(tuple(args.shape))
    ijk_to_ras = np.diag([1.0, 1.0, 1.5, 1.0])
    volume = slicer.util.addVolumeFromArray(values * 0, ijk_to_ras, "input")
    map_node = slicer.util.addVolumeFromArray(values, ijk_to_ras, "entropy")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    structure_id = segmentation.GetSegmentation().AddEmptySegment("structure", "structure")
    segments.set_segment_mask(segmentation, structure_id, structure, volume)

    setup_ms, flagging = timed(flagged_voxels.Referral, segmentation, structure_id, map_node, volume)
    thresholds = np.linspace(0.2, 0.95, args.steps)
    fast, naive = [], []
    naive_id = segmentation.GetSegmentation().AddEmptySegment("naive", "naive")
    for t in thresholds:
        ms, stats = timed(flagging.set_threshold, float(t))
        fast.append(ms)
        ms, (voxels, inside) = timed(naive_update, values, structure.astype(bool), segmentation, naive_id, volume,
                                     float(t))
        naive.append(ms)
        assert (stats.voxels, stats.inside_segmentation) == (voxels, inside), "fast and naive disagree"
    regions_ms, (_, found) = timed(regions.find_regions, flagging.mask, flagging.values,
                                   volumes.ijk_to_ras(volume), flagging.voxel_ml)
    curve_ms, _ = timed(flagging.curve)

    def row(name, values_ms):
        v = np.array(values_ms)
        return f"| {name} | {np.median(v):.1f} | {v.max():.1f} |"

    print(f"Referral update, {args.shape[0]} x {args.shape[1]} x {args.shape[2]} voxels, {args.steps} thresholds, "
          f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
          f"slicer-core {importlib.metadata.version('slicer-core')}\n")
    print("| step | median ms | max ms |\n|---|---|---|")
    print(row("threshold -> stats + segment (module)", fast))
    print(row("threshold -> stats + segment (naive: rescan + temporary labelmap node)", naive))
    print(f"\nmedian speed-up naive/module: {np.median(naive) / np.median(fast):.1f}x")
    print(f"one-time set-up (one sort of the map): {setup_ms:.0f} ms; threshold curve (101 points): {curve_ms:.1f} ms")
    print(f"flagged regions on demand (last threshold, {len(found)} regions): {regions_ms:.0f} ms")


if __name__ == "__main__":
    main()
