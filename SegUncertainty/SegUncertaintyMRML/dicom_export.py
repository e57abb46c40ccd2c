"""*Export as DICOM*: what the library's results/dicom_review.export_review needs, gathered from the scene:
the reviewed segmentation (the segmentation node as it is now, the reader's edits included), the regions
marked reviewed, the run's manifest and the input's DICOM files and grid. The library (highdicom) writes the
SEMIAUTOMATIC SEG and the TID 1500 SR; the module's logic calls it (review_logic.exportDicom).

Only for an input loaded from a DICOM series by Slicer's DICOM module: its volume node carries the series'
SOP Instance UIDs in the ``DICOM.instanceUIDs`` attribute (Modules/Scripted/DICOMPlugins/
DICOMScalarVolumePlugin.py, ``load``), and Slicer's DICOM database gives each one's file
(ctkDICOMDatabase::fileForInstance).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import slicer

from . import corrections, flagged_voxels, regions, results, segments, volumes

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def dicom_problem(input_volume) -> str | None:
    """Why the input cannot be exported as DICOM (one line), or None when it can."""
    if input_volume is None:
        return "No input volume."
    if not (input_volume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split():
        return (f"'{input_volume.GetName()}' was not loaded from a DICOM series (Slicer's DICOM module): Export as "
                "DICOM needs the series the objects refer to.")
    return None


def source_files(input_volume, file_for_instance: Callable[[str], str]) -> list[str]:
    """The files of the input's DICOM instances (``file_for_instance``: UID -> path, '' when unknown)."""
    problem = dicom_problem(input_volume)
    if problem:
        raise ValueError(problem)
    files = []
    for uid in input_volume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE).split():
        path = file_for_instance(uid)
        if not path or not Path(path).is_file():
            raise ValueError(f"DICOM instance {uid} of '{input_volume.GetName()}' is not in the DICOM database "
                             "any more: import the series again")
        files.append(path)
    return files


def class_masks(segmentation_node, labels: dict, input_volume) -> dict:
    """Class name -> (k, j, i) bool mask of its segment as it is now (a deleted segment: no entry). Segments
    are found by the ID the import gave them (the class name), then by name."""
    masks = {}
    for value, name in labels.items():
        if int(value) == 0:
            continue
        segment_id = name if segmentation_node.GetSegmentation().GetSegment(name) else \
            segments.segment_id_by_name(segmentation_node, name)
        if segment_id is not None:
            masks[name] = segments.segment_mask(segmentation_node, segment_id, input_volume)
    return masks


def reviewed_regions(run, input_volume) -> tuple[list[dict], str, float]:
    """The regions marked reviewed (corrections.load_review_state), numbered in review order among all the
    regions flagged at that threshold, as dicom_review.ReviewedRegion's fields, with the map and threshold
    they were flagged at; ([], "", nan) when none was marked."""
    state = corrections.load_review_state(run.segmentation)
    if not state or not state.get("reviewed"):
        return [], "", float("nan")
    map_name = str(state["map"]).removeprefix("map:")
    if map_name not in run.maps:
        raise ValueError(f"The map '{map_name}' the regions were reviewed on is no longer in the scene")
    values = np.ascontiguousarray(slicer.util.arrayFromVolume(run.maps[map_name]), dtype=np.float32)
    threshold = float(state["threshold"])
    _, found = regions.find_regions(values > np.float32(threshold), values, volumes.ijk_to_ras(input_volume),
                                    volumes.voxel_volume_ml(input_volume), order=state.get("order", "largest"))
    marked = set(state["reviewed"])
    reviewed = [{"number": number, "voxels": r.voxels, "volume_ml": r.volume_ml,
                 "max_uncertainty": r.max_uncertainty, "mean_uncertainty": r.mean_uncertainty,
                 "focus_lps": (-r.focus_ras[0], -r.focus_ras[1], r.focus_ras[2])}
                for number, r in enumerate(found, start=1) if r.label in marked]
    return reviewed, map_name, threshold


def review_inputs(run, input_volume, file_for_instance: Callable[[str], str]) -> dict:
    """The keyword arguments of dicom_review.export_review for ``run`` (results.RunNodes) as reviewed now.
    ValueError (one line) when the input is not a DICOM series or the run has no manifest."""
    files = source_files(input_volume, file_for_instance)
    manifest = run.manifest or json.loads(run.segmentation.GetAttribute(results.MANIFEST_ATTRIBUTE) or "{}")
    if not manifest.get("labels"):
        raise ValueError(f"'{run.segmentation.GetName()}' holds no run manifest (imported by an older version): "
                         "segment again to export it as DICOM")
    masks = class_masks(run.segmentation, manifest["labels"], input_volume)
    masks.pop(flagged_voxels.FLAGGED_SEGMENT, None)
    reviewed, map_name, threshold = reviewed_regions(run, input_volume)
    return {"files": files, "ijk_to_ras": volumes.ijk_to_ras(input_volume), "manifest": manifest, "masks": masks,
            "voxel_ml": volumes.voxel_volume_ml(input_volume), "regions": reviewed, "map_name": map_name,
            "threshold": threshold}
