"""Render the README's pictures of the module's results, offscreen, from a real run on the bundled sample.

    python Testing/scripts/render_screenshots.py [--out DIR]   # default: Resources/Screenshots

Runs the command line (ensemble + MC dropout) on the Colin27 T1 sample, imports its results into a
``slicer_headless`` scene with the module's MRML glue and renders Slicer's slice views (``slicer_render``):
slice_entropy.png (axial, entropy overlay and legend, brain outline), flagged_region.png (zoomed on the
largest region flagged for review, with its statistics) and three_views.png (axial, sagittal, coronal).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "SegUncertainty")]  # Testing.support; the module's SegUncertaintyMRML

import slicer  # noqa: E402
from SegUncertaintyModule import process, scenario  # noqa: E402
from SegUncertaintyMRML import flagged_voxels, overlays, regions, results, segments, volumes  # noqa: E402

from Testing.support import slicer_headless, slicer_render  # noqa: E402

SAMPLE = ROOT / "SegUncertaintyLib" / "sample" / "colin27_t1_2mm.nii.gz"
SIZE = (600, 600)
OVERVIEW_FOV_MM = 240.0  # whole head, with room for the legend
REGION_FOV_MM = 140.0  # zoomed on a flagged region
OUTLINE_COLOR = (0.2, 1.0, 0.35)  # brain outline: green stands out on grey and on Inferno


def window_input(volume, mask) -> None:
    """Grey window/level from the input's percentiles inside the head (1st to 99.5th)."""
    values = slicer.util.arrayFromVolume(volume)
    low, high = np.percentile(values[mask], [1.0, 99.5])
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(float(low), float(high))


def style_segmentation(segmentation, brain_id: str, flagging=None) -> None:
    """Brain as a thick outline without fill; the flagged segment (its own node, if any) filled and outlined."""
    display = segmentation.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2DOutline(True)
    display.SetVisibility2DFill(False)
    display.SetSliceIntersectionThickness(3)
    display.SetSegmentVisibility2DFill(brain_id, False)
    segmentation.GetSegmentation().GetSegment(brain_id).SetColor(*OUTLINE_COLOR)
    if flagging is not None:
        flagged = flagging.flagged_node.GetDisplayNode()
        flagged.SetVisibility(True)
        flagged.SetSliceIntersectionThickness(3)
        flagged.SetSegmentOpacity2DFill(flagging.flagged_segment_id, 0.55)
        flagged.SetSegmentVisibility2DOutline(flagging.flagged_segment_id, True)


def color_legend(map_node):
    """The map's color legend display node."""
    for i in range(map_node.GetNumberOfDisplayNodes()):
        display = map_node.GetNthDisplayNode(i)
        if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
            return display
    raise LookupError(f"'{map_node.GetName()}' has no color legend")


def centre_of(mask: np.ndarray, volume) -> tuple[float, float, float]:
    """Centroid of a (k, j, i) mask in RAS (mm)."""
    k, j, i = np.nonzero(mask)
    return tuple(float(x) for x in (volumes.ijk_to_ras(volume) @ [i.mean(), j.mean(), k.mean(), 1.0])[:3])


def render_all(scene, views: dict, tmp: Path, out: Path) -> list[Path]:
    """Run the command line on the sample, import its results and write the pictures into ``out``."""
    volume = volumes.read_volume(scene, SAMPLE, "colin27_t1")
    scenario.run_command(process.segment_command(sys.executable, str(SAMPLE), str(tmp / "out"),
                                                 method="ensemble+mc_dropout", samples=4))
    run = results.import_results(scene, tmp / "out", volume)
    entropy = run.maps["entropy"]
    brain_id = segments.segment_id_by_name(run.segmentation, "brain")
    brain = segments.segment_mask(run.segmentation, brain_id, volume)
    window_input(volume, slicer.util.arrayFromVolume(volume) > 0)
    overlays.show_layers(scene, volume, entropy, opacity=0.5)
    overlays.show_only_legend(run.maps.values(), entropy)
    style_segmentation(run.segmentation, brain_id)
    for view in views.values():
        view.fit()
        view.set_field_of_view(OVERVIEW_FOV_MM)
    regions.centre_views_on(scene, centre_of(brain, volume))
    written = [slicer_render.write_png(views["Red"].render(), out / "slice_entropy.png")]
    legend = color_legend(entropy)
    legend.AddViewNodeID(views["Green"].slice_node.GetID())  # one legend in the strip, on its right
    written.append(slicer_render.write_png([v.render() for v in views.values()], out / "three_views.png"))

    flagging = flagged_voxels.Referral(run.segmentation, brain_id, entropy, volume)
    stats = flagging.set_threshold(flagging.threshold_for_percent(3.0))
    _, found = regions.find_regions(flagging.mask, flagging.values, volumes.ijk_to_ras(volume),
                                    flagging.voxel_ml, order="largest", min_voxels=5)
    region = found[0]
    style_segmentation(run.segmentation, brain_id, flagging)
    overlays.set_overlay_opacity(scene, 0.0)  # the flag, not the map: no overlay, no legend
    legend.SetVisibility(False)
    red = views["Red"]
    red.set_field_of_view(REGION_FOV_MM)
    regions.centre_views_on(scene, region.focus_ras)
    red.add_text(f"\nFlagged for review (entropy > {stats.threshold:.3f})\n"
                 f"{stats.voxels} voxels, {stats.volume_ml:.1f} mL, "
                 f"{stats.percent_of_segmentation:.1f} % of the segmentation\n"
                 f"Region 1 of {len(found)}: {region.voxels} voxels, {region.volume_ml:.1f} mL, "
                 f"max entropy {region.max_uncertainty:.2f}", corner=2, font_size=15)
    written.append(slicer_render.write_png(red.render(), out / "flagged_region.png"))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seguncertainty_screens_") as tmp:
        tmp = Path(tmp)
        scene = slicer_headless.new_scene(tmp / "home")
        # Views first, as in Slicer: the color legend's displayable manager only sees legends added later.
        views = {name: slicer_render.SliceViewRenderer(name, SIZE) for name, _ in slicer_headless.SLICE_VIEWS}
        try:
            written = render_all(scene, views, tmp, args.out)
        finally:
            for view in views.values():
                view.close()
    for path in written:
        print(path)
    print(f"{len(written)} pictures in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
