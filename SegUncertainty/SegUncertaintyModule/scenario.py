"""The module's whole workflow on a synthetic head, headless: the self-test inside Slicer and the pytest
suite outside it run this same function.

make a head -> run the command line (a real background process) -> import its results -> overlays ->
referral at a threshold -> regions, most uncertain first -> centre the views -> remove a region and undo
-> export -> save the scene. Every step checks its outcome and raises AssertionError when wrong.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import slicer
from SegUncertaintyMRML import corrections, flagged_voxels, overlays, persistence, regions, results, segments, volumes

from . import process

HEAD_SHAPE = (60, 72, 60)  # (k, j, i) voxels of 3 mm: 18 x 21.6 x 18 cm


def head_phantom(shape=HEAD_SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like synthetic head (scalp, skull, CSF, grey and white matter ellipsoids) and its brain mask."""
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    centre = np.array(shape, np.float32) / 2

    def inside(a: float, b: float, c: float) -> np.ndarray:
        return ((k - centre[0]) / a) ** 2 + ((j - centre[1]) / b) ** 2 + ((i - centre[2]) / c) ** 2 < 1

    image = np.zeros(shape, np.float32)
    for semi_axes, value in (((26, 33, 27), 900), ((24, 31, 25), 150), ((22, 29, 23), 300),
                             ((20, 27, 21), 650), ((15, 21, 16), 850)):
        image[inside(*semi_axes)] = value
    image += np.random.default_rng(seed).normal(0, 30, shape).astype(np.float32)
    return image, inside(20, 27, 21)


def add_head_volume(scene, name: str = "SegUncertainty test head"):
    """The phantom as a scalar volume node, 3 mm voxels centred on the RAS origin; returns (node, mask)."""
    image, brain = head_phantom()
    ijk_to_ras = np.diag([3.0, 3.0, 3.0, 1.0])
    ijk_to_ras[:3, 3] = [-1.5 * (n - 1) for n in image.shape[::-1]]
    node = slicer.util.addVolumeFromArray(image, ijk_to_ras, name)
    return node, brain


def run_command(args: list[str], env: dict | None = None, on_progress=None) -> list[str]:
    """Run the command line, blocking, feeding progress to ``on_progress``; raise RuntimeError on failure."""
    log: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            progress = process.parse_line(line)
            if progress is None:
                log.append(line.rstrip())
            elif on_progress is not None:
                on_progress(progress)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(process.error_message(log, code))
    return log


def run_scenario(scene, workdir: str | Path, python: str, env: dict | None = None,
                 method: str = "ensemble") -> dict:
    """The whole workflow (see module doc) in ``workdir``, the command line run blocking; returns what it
    measured. The module's self-test starts the run through the logic instead and calls ``review_run``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    volume, brain = add_head_volume(scene)
    volumes.write_volume(volume, workdir / "input.nrrd")
    stages: list[str] = []
    start = time.perf_counter()
    run_command(process.segment_command(python, str(workdir / "input.nrrd"), str(workdir / "out"), method=method),
                env=env, on_progress=lambda p: stages.append(p.stage))
    run_s = time.perf_counter() - start
    assert stages and stages[-1] == "write", f"progress stages seen: {sorted(set(stages))}"
    nodes_before = scene.GetNumberOfNodes()
    run = results.import_results(scene, workdir / "out", volume)
    nodes_added = scene.GetNumberOfNodes() - nodes_before
    return dict(review_run(scene, run, volume, brain, workdir), run_s=run_s, nodes_added=nodes_added)


def review_run(scene, run, volume, brain: np.ndarray, workdir: str | Path) -> dict:
    """Everything after the import (see module doc) on a run of the head phantom; returns what it measured."""
    workdir = Path(workdir)
    report: dict = {}
    brain_id = run.segmentation.GetSegmentation().GetSegmentIdBySegmentName("brain")
    predicted = segments.segment_mask(run.segmentation, brain_id, volume)
    report["dice"] = float(2 * (predicted & brain).sum() / (predicted.sum() + brain.sum()))
    assert report["dice"] > 0.8, f"the bundled model missed the phantom's brain (Dice {report['dice']:.3f})"
    assert {"entropy", "mutual_information", "variance"} <= set(run.maps), sorted(run.maps)

    overlays.show_layers(scene, volume, run.maps["entropy"], opacity=0.5)
    flagging = flagged_voxels.Referral(run.segmentation, brain_id, run.maps["entropy"], volume)
    threshold = flagging.threshold_for_percent(5.0)
    stats = flagging.set_threshold(threshold)
    flagged = segments.segment_mask(flagging.flagged_node, flagging.flagged_segment_id, volume)
    assert int(flagged.sum()) == stats.voxels == int((flagging.values > threshold).sum()), "flagged count"
    report["flagged"] = stats

    labels, found = regions.find_regions(flagging.mask, flagging.values, volumes.ijk_to_ras(volume),
                                         flagging.voxel_ml, order="largest")
    assert found and sum(r.voxels for r in found) == stats.voxels, "regions must cover the flagged voxels"
    assert all(a.voxels >= b.voxels for a, b in zip(found, found[1:], strict=False)), "largest region first"
    navigator = regions.RegionNavigator(found)
    region = navigator.step()
    regions.centre_views_on(scene, region.focus_ras)
    report["regions"] = len(found)

    editing = corrections.Corrections(corrections.editor_logic(scene, run.segmentation, volume),
                                      run.segmentation, volume)
    region_mask = labels == region.label
    removed = editing.apply(brain_id, region_mask, "remove")
    after = segments.segment_mask(run.segmentation, brain_id, volume)
    assert removed == int((predicted & region_mask).sum()) and not (after & region_mask).any(), "remove"
    editing.undo()
    assert np.array_equal(segments.segment_mask(run.segmentation, brain_id, volume), predicted), "undo"
    navigator.mark_reviewed()
    corrections.save_review_state(run.segmentation, "entropy", threshold, "largest", navigator.reviewed)
    report["removed_then_undone"] = removed

    report["exported"] = [p.name for p in persistence.export_run(scene, run, volume, workdir / "export")]
    report["scene"] = str(persistence.save_scene(scene, workdir / "scene.mrb"))
    return report
