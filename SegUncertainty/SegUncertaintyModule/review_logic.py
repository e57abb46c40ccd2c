"""The logic's review of a run: the parameter node applied to the views (map, colormap, opacity, threshold,
regions), the flagged regions stepped through and marked, corrections with Undo, and the export."""

from __future__ import annotations

from pathlib import Path

import slicer
import vtk
from SegUncertaintyMRML import (
    calibrated_referral,
    corrections,
    dicom_export,
    flagged_voxels,
    overlays,
    persistence,
    regions,
    results,
    volumes,
)
from slicer.i18n import tr as _

DEFAULT_FLAGGED_PERCENT = 5.0  # a new map starts with the threshold that flags this % of the segmentation


class ReviewLogic:
    """Mixed into SegUncertaintyLogic; works on the run under review (``self.run``, ``self.inputVolume``)
    and keeps its review state: ``flagging``, ``stats``, ``navigator``, ``labels``, ``chart``, ``editing``,
    ``order`` and ``minRegionMl``, ``_shown`` and ``_keepThreshold`` (all reset by ``reset``, logic.py)."""

    def applyParameters(self, params) -> set[str]:
        """Bring the views in line with the parameter node, doing only what changed since the last call:
        a new map (or run) rebuilds the referral and sets the threshold that flags DEFAULT_FLAGGED_PERCENT, or,
        on a calibrated run's map, its calibrated threshold (a new calibrated run shows that map first; a
        restored run keeps its saved map and threshold), a new colormap restyles the map, a new opacity fades it,
        a new threshold moves the flagged voxels, a new region order or smallest region size resets the
        regions. Returns what changed: a subset of {"map", "colormap", "opacity", "threshold", "regions"}."""
        if self.run is None or not self.run.maps:
            return set()
        shown, changed = self._shown, set()
        referral = self.run.referral
        mapName = params.uncertaintyMap if params.uncertaintyMap in self.run.maps else next(iter(self.run.maps))
        if self.flagging is None and referral and referral["map"] in self.run.maps and not self._keepThreshold:
            mapName = referral["map"]
        if self.flagging is None or shown.get("map") != mapName:
            flagging = self.showMap(mapName, params.colormap, params.overlayOpacity)
            keep = self._keepThreshold and 0.0 <= params.threshold <= flagging.maximum
            self._keepThreshold = False
            if keep:
                threshold = params.threshold
            elif referral and referral["map"] == mapName:
                threshold = calibrated_referral.slider_threshold(referral, flagging.maximum)
            else:
                threshold = flagging.threshold_for_percent(DEFAULT_FLAGGED_PERCENT)
            shown.clear()
            shown.update(map=mapName, colormap=params.colormap, opacity=params.overlayOpacity)
            changed.add("map")
        else:
            threshold = params.threshold
            if shown["colormap"] != params.colormap:
                overlays.style_map(self.flagging.map_node, params.colormap)
                shown["colormap"] = params.colormap
                changed.add("colormap")
            if shown["opacity"] != params.overlayOpacity:
                overlays.set_overlay_opacity(slicer.mrmlScene, params.overlayOpacity)
                shown["opacity"] = params.overlayOpacity
                changed.add("opacity")
        regionsWanted = (params.regionOrder, params.minRegionMl)
        if shown.get("threshold") != threshold:
            shown.update(threshold=threshold, regions=regionsWanted)
            self.setThreshold(threshold, *regionsWanted)
            changed.add("threshold")
        elif shown.get("regions") != regionsWanted:
            shown["regions"] = regionsWanted
            self.order, self.minRegionMl = regionsWanted
            self.navigator = self.labels = None
            changed.add("regions")
        if params.threshold != threshold or params.uncertaintyMap != mapName:
            wasModifying = params.StartModify()  # both at once: the nested call finds nothing left to do
            try:
                params.threshold, params.uncertaintyMap = threshold, mapName
            finally:
                params.EndModify(wasModifying)
        return changed

    def guaranteeText(self) -> str:
        """What the calibration guarantees at the current threshold (calibrated_referral.guarantee_text), or
        how to calibrate; "" before a map is shown."""
        if self.flagging is None or self.flagging.threshold is None:
            return ""
        return calibrated_referral.guarantee_text(self.run.referral, self._shown.get("map", ""),
                                                  self.flagging.threshold, self.flagging.maximum)

    def segmentEditorNode(self):
        """The scene's one SegUncertainty segment editor node (corrections.editor_node): the embedded Segment
        Editor's, and the corrections'; a new one after the scene was closed."""
        return corrections.editor_node(slicer.mrmlScene)

    def structureSegmentId(self) -> str:
        segmentation = self.run.segmentation.GetSegmentation()
        return next(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                    if segmentation.GetNthSegment(i).GetName() != flagged_voxels.FLAGGED_SEGMENT)

    def showMap(self, mapName: str, colormap: str, opacity: float) -> flagged_voxels.Referral:
        """Show one uncertainty map over the input and prepare referral on it."""
        mapNode = self.run.maps[mapName]
        overlays.style_map(mapNode, colormap)
        overlays.show_layers(slicer.mrmlScene, self.inputVolume, mapNode, opacity)
        overlays.show_only_legend(self.run.maps.values(), mapNode)
        self.flagging = flagged_voxels.Referral(self.run.segmentation, self.structureSegmentId(), mapNode,
                                                self.inputVolume)
        self.flagging.flagged_node.SetAndObserveTransformNodeID(self.inputVolume.GetTransformNodeID())
        self.chart = self.navigator = self.labels = self.stats = None
        return self.flagging

    def setThreshold(self, threshold: float, order: str = "largest", minRegionMl: float = 0.0):
        """Update the flagged segment and its statistics (fast: no region search, see findRegions)."""
        stats = self.stats = self.flagging.set_threshold(threshold)
        self.order, self.minRegionMl = order, minRegionMl
        self.navigator = self.labels = None  # regions are found on demand, when the user steps through them
        if self.chart is not None:
            flagged_voxels.update_curve_marker(self.chart, threshold)
        return stats

    def findRegions(self) -> regions.RegionNavigator:
        """Connected flagged regions at the current threshold, in review order; restores reviewed marks."""
        minVoxels = max(1, int(round(self.minRegionMl / self.flagging.voxel_ml)))
        self.labels, found = regions.find_regions(self.flagging.mask, self.flagging.values,
                                                  volumes.ijk_to_ras(self.inputVolume), self.flagging.voxel_ml,
                                                  order=self.order, min_voxels=minVoxels)
        saved = corrections.load_review_state(self.run.segmentation)
        same = saved and saved.get("threshold") == self.flagging.threshold and saved.get("order") == self.order
        self.navigator = regions.RegionNavigator(found, set(saved["reviewed"]) if same else None)
        return self.navigator

    def curveChart(self):
        if self.flagging is None:
            return None
        if self.chart is None:
            self.chart = flagged_voxels.add_curve_plot(slicer.mrmlScene, self.flagging,
                                                       f"{self.run.name} referral curve")
        flagged_voxels.update_curve_marker(self.chart, self.flagging.threshold or 0.0)
        return self.chart

    def stepRegion(self, direction: int):
        if self.navigator is None and self.flagging is not None:
            self.findRegions()
        region = self.navigator.step(direction) if self.navigator else None
        if region is not None:
            regions.centre_views_on(slicer.mrmlScene, self.worldPoint(region.focus_ras))
        return region

    def worldPoint(self, ras) -> tuple[float, float, float]:
        """A point of the input's own RAS space (where regions are found) in world RAS, through the input's
        parent transforms (the identity when it has none)."""
        transformNode = self.inputVolume.GetParentTransformNode()
        if transformNode is None:
            return tuple(float(v) for v in ras)
        toWorld = vtk.vtkGeneralTransform()
        transformNode.GetTransformToWorld(toWorld)
        return tuple(toWorld.TransformPoint([float(v) for v in ras]))

    def markReviewed(self) -> None:
        if self.navigator and self.navigator.current:
            self.navigator.mark_reviewed()
            corrections.save_review_state(self.run.segmentation, self.flagging.map_node.GetAttribute(
                results.ROLE_ATTRIBUTE), self.flagging.threshold, self.order, self.navigator.reviewed)

    def correctCurrentRegion(self, mode: str, saveState=None) -> int:
        """Add or remove the current flagged region; saveState saves for undo (default: the logic's own
        history, which ``undo`` reverts)."""
        region = self.navigator.current if self.navigator else None
        if region is None:
            raise RuntimeError(_("Select a flagged region first (Next region)."))
        if self.editing is None:
            self.editing = corrections.Corrections(
                corrections.editor_logic(slicer.mrmlScene, self.run.segmentation, self.inputVolume),
                self.run.segmentation, self.inputVolume)
        return self.editing.apply(self.structureSegmentId(), self.labels == region.label, mode, saveState)

    def undo(self) -> None:
        if self.editing is not None:
            self.editing.undo()

    def redo(self) -> None:
        if self.editing is not None:
            self.editing.redo()

    def onSegmentationModified(self, caller=None, event=None) -> None:
        """A segment of the reviewed segmentation changed (a correction, an edit or Undo/Redo of the Segment
        Editor, ours): recount the statistics; the flagged voxels, in their own node, are not in the
        segmentation's undo history and stay."""
        if self.flagging is None or self.flagging.threshold is None:
            return
        if self.run.segmentation.GetSegmentation().GetSegment(self.flagging.structure_segment_id) is None:
            return  # the structure segment was deleted: nothing left to count inside
        self.flagging.refresh_structure()
        self.stats = self.flagging.stats(self.flagging.threshold)
        if self.onStatisticsChanged:
            self.onStatisticsChanged()

    def export(self, folder: str) -> list[Path]:
        return persistence.export_run(slicer.mrmlScene, self.run, self.inputVolume, folder)

    def dicomExportProblem(self) -> str | None:
        """Why Export as DICOM cannot run (one line), or None."""
        if self.run is None or self.inputVolume is None:
            return _("Segment a volume first.")
        return dicom_export.dicom_problem(self.inputVolume)

    def exportDicom(self, folder: str, destination: str = "") -> tuple[list[Path], str]:
        """Write the reviewed segmentation as a SEMIAUTOMATIC SEG and the reviewed regions as a TID 1500 SR
        (dicom_export) into ``folder``/"<run> DICOM"; then, when ``destination`` names one (a DICOMweb URL, or
        AET@HOST:PORT for DIMSE), send them there (sendDicom). Returns the files and what was sent ("" when
        nothing). RuntimeError with one line on any failure."""
        problem = self.dicomExportProblem()
        if problem:
            raise RuntimeError(problem)
        database = getattr(slicer, "dicomDatabase", None)
        if database is None:
            raise RuntimeError(_("Slicer's DICOM database is not open: open the DICOM module once."))
        from SegUncertaintyLib.core.errors import UsageError
        from SegUncertaintyLib.results.dicom_review import export_review  # highdicom: only when exporting

        target = Path(folder) / f"{self.run.name} DICOM".replace("/", "_")
        try:
            written = export_review(target, **dicom_export.review_inputs(self.run, self.inputVolume,
                                                                         database.fileForInstance))
        except (ValueError, UsageError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        sent = self.sendDicom(target, destination) if destination.strip() else ""
        return written, sent

    def sendDicom(self, folder, destination: str) -> str:
        """Send an exported folder's objects with the library's cohort/pacs.py (only those the server lacks,
        for DICOMweb), credentials from the environment or $SEGUNCERTAINTY_DICOMWEB_* as the command line
        reads them; returns "stored N/M at DESTINATION"."""
        from SegUncertaintyLib.cohort.pacs import Destination, store_run
        from SegUncertaintyLib.core.errors import PacsError, UsageError
        from SegUncertaintyLib.io.dicomweb import DicomWeb, read_credentials

        destination = destination.strip()
        try:
            target = Destination(web=DicomWeb(destination, read_credentials())) if "://" in destination else \
                Destination(dimse=destination)
            stored, count, _ = store_run(Path(folder), target)
        except (PacsError, UsageError) as exc:
            raise RuntimeError(str(exc)) from None
        return f"stored {stored}/{count} at {target.label}"
