"""Referral: voxels whose uncertainty is above a threshold, shown live as a "Flagged for review" segment.

The flagged segment lives in a segmentation node of its own (``flagged_node``), referenced by the run's
segmentation: the Segment Editor saves every segment of the node it edits for undo, so a flagged segment in
the edited node would be reverted by Undo while the threshold (and the statistics) stay where they are.

One sort of the map at set-up makes every count O(log n) (a binary search), so the statistics and the
threshold curve never rescan the volume; only the segment itself needs one thresholding pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

from . import segments, volumes

FLAGGED_SEGMENT = "Flagged for review"
FLAGGED_COLOR = (1.0, 0.9, 0.1)
FLAGGED_REFERENCE = "SegUncertainty.Flagged"  # node reference role: run segmentation -> its flagged node
FLAGGED_ROLE = "flagged"  # results.ROLE_ATTRIBUTE of that node


def flagged_node(segmentation_node, reference_volume):
    """The segmentation node that holds ``segmentation_node``'s "Flagged for review" segment; created on
    first use beside it (same run attribute, same subject hierarchy folder)."""
    node = segmentation_node.GetNodeReference(FLAGGED_REFERENCE)
    if node is not None:
        return node
    scene = segmentation_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{segmentation_node.GetName()} flagged for review")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    for attribute in ("SegUncertainty.Run",):
        if segmentation_node.GetAttribute(attribute):
            node.SetAttribute(attribute, segmentation_node.GetAttribute(attribute))
    node.SetAttribute("SegUncertainty.Role", FLAGGED_ROLE)
    segmentation_node.SetNodeReferenceID(FLAGGED_REFERENCE, node.GetID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation_node))
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)
    return node


@dataclass(frozen=True)
class ReferralStats:
    """Flagged = uncertainty > threshold. percent_of_segmentation: flagged voxels per 100 segmented voxels."""

    threshold: float
    voxels: int
    volume_ml: float
    percent_of_segmentation: float
    inside_segmentation: int


class Referral:
    """Live flagging of one uncertainty map inside one run's segmentation node.

    segmentation_node: the run's segmentation; structure_segment_id: the segment under review;
    map_node: an uncertainty volume on the grid of reference_volume (the input). The flagged voxels go to
    ``flagged_node(segmentation_node)``, never into segmentation_node itself.
    """

    def __init__(self, segmentation_node, structure_segment_id: str, map_node, reference_volume):
        if not volumes.same_grid(map_node, reference_volume):
            raise ValueError(f"'{map_node.GetName()}' is not on the grid of '{reference_volume.GetName()}'")
        self.segmentation_node = segmentation_node
        self.structure_segment_id = structure_segment_id
        self.map_node = map_node
        self.reference_volume = reference_volume
        self.values = np.ascontiguousarray(slicer.util.arrayFromVolume(map_node), dtype=np.float32)
        if not np.isfinite(self.values).all():
            raise ValueError(f"'{map_node.GetName()}' contains NaN or infinite values")
        self._sorted = np.sort(self.values, axis=None)
        self.refresh_structure()
        self.voxel_ml = volumes.voxel_volume_ml(reference_volume)
        self._mask = np.zeros(self.values.shape, np.uint8)
        self._image = volumes.oriented_image(self._mask, volumes.ijk_to_ras(reference_volume))
        self.flagged_node = flagged_node(segmentation_node, reference_volume)
        self.flagged_segment_id = self._flagged_segment()
        self.threshold: float | None = None

    def refresh_structure(self) -> None:
        """Re-read the structure segment (after an edit, Undo or Redo) for the statistics inside it."""
        structure = segments.segment_mask(self.segmentation_node, self.structure_segment_id, self.reference_volume)
        self._sorted_inside = np.sort(self.values[structure])

    @property
    def maximum(self) -> float:
        return float(self._sorted[-1]) if self._sorted.size else 0.0

    @property
    def mask(self) -> np.ndarray:
        """The flagged voxels at the current threshold, (k, j, i) bool (a view, do not modify)."""
        return self._mask.view(bool)

    def _flagged_segment(self) -> str:
        segmentation = self.flagged_node.GetSegmentation()
        segment_id = segments.segment_id_by_name(self.flagged_node, FLAGGED_SEGMENT)
        if segment_id is None:
            segment_id = segmentation.AddEmptySegment("", FLAGGED_SEGMENT, FLAGGED_COLOR)
        display = self.flagged_node.GetDisplayNode()
        if display is not None:
            display.SetSegmentOpacity2DFill(segment_id, 0.6)
        return segment_id

    def count_above(self, threshold: float, inside: bool = False) -> int:
        """Number of voxels with uncertainty > threshold (inside the structure when ``inside``)."""
        values = self._sorted_inside if inside else self._sorted
        return int(values.size - np.searchsorted(values, np.float32(threshold), side="right"))

    def stats(self, threshold: float) -> ReferralStats:
        """Statistics at ``threshold`` without touching the segment."""
        voxels = self.count_above(threshold)
        segmented = self._sorted_inside.size
        return ReferralStats(
            threshold=float(threshold), voxels=voxels, volume_ml=voxels * self.voxel_ml,
            percent_of_segmentation=100.0 * voxels / segmented if segmented else float("nan"),
            inside_segmentation=self.count_above(threshold, inside=True),
        )

    def set_threshold(self, threshold: float) -> ReferralStats:
        """Update the "Flagged for review" segment to uncertainty > threshold; return its statistics."""
        np.greater(self.values, np.float32(threshold), out=self._mask.view(bool))  # as count_above compares
        self._image.Modified()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.SetBinaryLabelmapToSegment(self._image, self.flagged_node, self.flagged_segment_id,
                                                logic.MODE_REPLACE):
            raise RuntimeError("Could not update the flagged segment")
        self.threshold = float(threshold)
        return self.stats(threshold)

    def curve(self, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
        """Thresholds from 0 to the map's maximum and the percentage of all voxels flagged at each."""
        thresholds = np.linspace(0.0, self.maximum, n_points).astype(np.float32)
        counts = self._sorted.size - np.searchsorted(self._sorted, thresholds, side="right")
        return thresholds, 100.0 * counts / max(self._sorted.size, 1)

    def threshold_for_percent(self, percent_of_segmentation: float) -> float:
        """A threshold that flags as many voxels as this percentage of the segmented volume (a starting
        point; ties in the map can flag more or fewer)."""
        k = int(round(self._sorted_inside.size * percent_of_segmentation / 100.0))
        n = self._sorted.size
        if k <= 0 or n == 0:
            return self.maximum
        if k >= n:
            return float(np.nextafter(self._sorted[0], np.float32(-np.inf)))
        return float(self._sorted[n - k - 1])  # flagged = values > threshold: exactly the k largest


def add_curve_plot(scene, referral: Referral, name: str):
    """A plot chart of the percentage of voxels flagged against the threshold, with a marker line for
    the current threshold (updated by ``update_curve_marker``); returns the chart node. Its nodes carry the
    run's attribute, as the run's other nodes do."""
    thresholds, percents = referral.curve()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    slicer.util.updateTableFromArray(table, (thresholds, percents), ["threshold", "percent flagged"])
    marker = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} marker")
    slicer.util.updateTableFromArray(marker, (np.zeros(2), np.array([0.0, max(percents.max(), 1e-3)])),
                                     ["threshold", "percent flagged"])
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    for table_node, series_name, color in ((table, "flagged", (0.1, 0.3, 0.9)), (marker, "threshold", (0.9, 0.2, 0.1))):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {series_name}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("threshold")
        series.SetYColumnName("percent flagged")
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Voxels flagged against threshold")
    chart.SetXAxisTitle(f"{referral.map_node.GetAttribute('SegUncertainty.Role') or 'uncertainty'} threshold")
    chart.SetYAxisTitle("% of all voxels flagged")
    chart.SetYAxisLogScale(False)
    chart.SetAttribute("SegUncertainty.MarkerTable", marker.GetID())
    run = referral.segmentation_node.GetAttribute("SegUncertainty.Run")
    if run:  # the run's nodes go together (e.g. when a cohort case leaves the scene)
        for node in (table, marker, chart, *(chart.GetNthPlotSeriesNode(i) for i in range(2))):
            node.SetAttribute("SegUncertainty.Run", run)
    return chart


def update_curve_marker(chart, threshold: float) -> None:
    """Move the chart's threshold marker line to ``threshold``."""
    marker = chart.GetScene().GetNodeByID(chart.GetAttribute("SegUncertainty.MarkerTable"))
    table = marker.GetTable()
    for row in range(2):
        table.SetValue(row, 0, float(threshold))
    table.Modified()
