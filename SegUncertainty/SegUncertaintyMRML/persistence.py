"""Save a run with the scene (.mrb) and export its nodes to files, each file written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer

from . import flagged_voxels, segments, volumes
from .files import write_atomically


def save_scene(scene, path: str | Path) -> Path:
    """Write the whole scene (nodes, data, attributes) to a Slicer .mrb bundle."""
    for node in slicer.util.getNodesByClass("vtkMRMLStorableNode", scene):
        if node.GetStorageNode() is None and not node.GetHideFromEditors():
            node.AddDefaultStorageNode()
    return write_atomically(scene.WriteToMRB, Path(path))


def load_scene(scene, path: str | Path, app_logic) -> None:
    """Read a .mrb bundle into ``scene`` (with the data IO set up that Slicer's application normally adds)."""
    io_manager = slicer.vtkDataIOManagerLogic()
    io_manager.SetMRMLApplicationLogic(app_logic)
    io_manager.SetAndObserveMRMLScene(scene)
    remote = slicer.vtkMRMLRemoteIOLogic()
    remote.SetMRMLScene(scene)
    remote.AddDataIOToScene()
    if not scene.ReadFromMRB(str(path)):
        raise OSError(f"Could not read scene bundle {path}")


def structure_labelmap(segmentation_node, reference_volume) -> np.ndarray:
    """The structure segments (not the flagged one) as one (k, j, i) uint8 labelmap with their label values."""
    labelmap = np.zeros(slicer.util.arrayFromVolume(reference_volume).shape, np.uint8)
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        if segment.GetName() == flagged_voxels.FLAGGED_SEGMENT:
            continue
        mask = segments.segment_mask(segmentation_node, segmentation.GetNthSegmentID(index), reference_volume)
        labelmap[mask] = segment.GetLabelValue()
    return labelmap


def write_table(table_node, path: Path) -> Path:
    """A table node as a tab- or comma-separated file (by extension)."""
    def write(partial: str) -> bool:
        storage = slicer.vtkMRMLTableStorageNode()
        storage.SetFileName(partial)
        return bool(storage.WriteData(table_node))
    return write_atomically(write, path)


def export_run(scene, run, reference_volume, folder: str | Path, extension: str = ".nrrd") -> list[Path]:
    """Export a run: the (corrected) segmentation as a labelmap, the flagged voxels, the maps and the scores.

    Returns the written paths. ``run`` is a results.RunNodes or the {role: node} dict of results.find_runs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nodes = run if isinstance(run, dict) else _roles(run)
    seg_node = nodes["segmentation"]
    written = []
    labelmap = structure_labelmap(seg_node, reference_volume)
    written.append(_write_array(scene, labelmap, reference_volume, folder / f"segmentation_corrected{extension}"))
    flagged_node = seg_node.GetNodeReference(flagged_voxels.FLAGGED_REFERENCE)
    flagged_id = segments.segment_id_by_name(flagged_node, flagged_voxels.FLAGGED_SEGMENT) if flagged_node else None
    if flagged_id is not None:
        flagged = segments.segment_mask(flagged_node, flagged_id, reference_volume).astype(np.uint8)
        written.append(_write_array(scene, flagged, reference_volume, folder / f"flagged_for_review{extension}"))
    for role, node in sorted(nodes.items()):
        if role.startswith("map:") and node is not None:
            path = folder / f"{role[4:]}{extension}"
            volumes.write_volume(node, path)
            written.append(path)
    if nodes.get("scores") is not None:
        written.append(write_table(nodes["scores"], folder / "scores.tsv"))
    return written


def _roles(run) -> dict:
    nodes = {"segmentation": run.segmentation, "scores": run.scores}
    nodes.update({f"map:{name}": node for name, node in run.maps.items()})
    return nodes


def _write_array(scene, array: np.ndarray, reference_volume, path: Path) -> Path:
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__seguncertainty_export__")
    try:
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volumes.ijk_to_ras(reference_volume)))
        slicer.util.updateVolumeFromArray(node, array)
        volumes.write_volume(node, path)
    finally:
        volumes.remove_node(scene, node)
    return path
