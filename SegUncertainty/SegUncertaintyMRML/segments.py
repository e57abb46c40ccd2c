"""Segments from and to numpy masks on a volume's grid, without temporary nodes."""

from __future__ import annotations

import numpy as np
import slicer

from . import volumes


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, reference_volume) -> None:
    """Replace a segment's voxels by ``mask`` ((k, j, i) on ``reference_volume``'s grid, non-zero = inside)."""
    array = np.ascontiguousarray(mask, dtype=np.uint8)
    image = volumes.oriented_image(array, volumes.ijk_to_ras(reference_volume))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"Could not set the voxels of segment '{segment_id}'")


def segment_mask(segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """A segment as a (k, j, i) bool array on ``reference_volume``'s grid."""
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_volume) > 0


def segment_id_by_name(segmentation_node, name: str) -> str | None:
    """The ID of the segment called ``name`` (None when absent)."""
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return segment_id or None
