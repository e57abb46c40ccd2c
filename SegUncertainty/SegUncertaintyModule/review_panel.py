"""The panel's results and referral sections: the threshold's range, the flagged-voxel statistics and what a
calibration guarantees at the threshold, the referral curve, stepping through the flagged regions, marking them
reviewed, correcting them (with the Segment Editor's Undo), and the exports (files, and DICOM with an optional
send)."""

from __future__ import annotations

import slicer
from slicer.i18n import tr as _


class ReviewPanel:
    """Mixed into SegUncertaintyWidget (uses ``self.ui``, ``self.logic``, ``self._parameterNode``)."""

    def setupReviewPanel(self) -> None:
        self.ui.showCurveButton.clicked.connect(self.onShowCurve)
        self.ui.nextRegionButton.clicked.connect(lambda: self.onStepRegion(1))
        self.ui.previousRegionButton.clicked.connect(lambda: self.onStepRegion(-1))
        self.ui.markReviewedButton.clicked.connect(self.onMarkReviewed)
        self.ui.removeRegionButton.clicked.connect(lambda: self.onCorrectRegion("remove"))
        self.ui.addRegionButton.clicked.connect(lambda: self.onCorrectRegion("add"))
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.exportDicomButton.clicked.connect(self.onExportDicom)

    def updateReferral(self) -> None:
        """The threshold slider's range and the statistics and region labels, from the logic's state."""
        flagging = self.logic.flagging
        if flagging is None or self._parameterNode is None:
            return
        maximum = max(flagging.maximum, self._parameterNode.threshold, 1e-6)
        self.ui.thresholdSlider.maximum = maximum  # never below the threshold: no clamping
        self.ui.thresholdSlider.singleStep = maximum / 1000
        stats = self.logic.stats
        self.ui.flaggedStatsLabel.text = _(
            "{voxels} voxels flagged ({ml:.1f} mL, {pct:.1f} % of the segmentation; {inside} inside it)"
        ).format(voxels=stats.voxels, ml=stats.volume_ml, pct=stats.percent_of_segmentation,
                 inside=stats.inside_segmentation)
        self.ui.guaranteeLabel.text = self.logic.guaranteeText()
        self.updateRegionLabels()

    def onShowCurve(self) -> None:
        chart = self.logic.curveChart()
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onStepRegion(self, direction: int) -> None:
        region = self.logic.stepRegion(direction)
        self.updateRegionLabels()
        if region is None:
            self.ui.regionLabel.text = _("No flagged region at this threshold")

    def onMarkReviewed(self) -> None:
        self.logic.markReviewed()
        self.updateRegionLabels()

    def onCorrectRegion(self, mode: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Correction failed."), waitCursor=True):
            # the embedded Segment Editor keeps the undo history, so its Undo and ours are the same stack
            changed = self.logic.correctCurrentRegion(mode, saveState=self.ui.segmentEditorWidget.saveStateForUndo)
            self.ui.regionLabel.text = _("{n} voxels changed; Undo reverts").format(n=changed)

    def onUndo(self) -> None:
        self.ui.segmentEditorWidget.undo()  # the logic observes the segmentation: statistics follow

    def updateRegionLabels(self) -> None:
        navigator = self.logic.navigator
        if navigator is None:
            self.ui.regionLabel.text = _("Press Next region to step through the flagged regions")
            self.ui.remainingLabel.text = ""
            return
        region = navigator.current
        if region is not None:
            self.ui.regionLabel.text = _(
                "Region {i} of {n}: {ml:.2f} mL, max uncertainty {u:.3f}{reviewed}"
            ).format(i=navigator.index + 1, n=len(navigator.regions), ml=region.volume_ml,
                     u=region.max_uncertainty, reviewed=_(" (reviewed)") if region.label in navigator.reviewed else "")
        self.ui.remainingLabel.text = _("{r} of {n} regions left to review").format(
            r=navigator.remaining, n=len(navigator.regions))

    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.export(self.ui.exportDirectoryButton.directory)
            slicer.util.infoDisplay(_("Wrote {n} files to {folder}").format(
                n=len(written), folder=self.ui.exportDirectoryButton.directory))

    def updateDicomExport(self) -> None:
        """Export as DICOM: enabled for a run whose input is a DICOM series; otherwise the tooltip says why."""
        problem = self.logic.dicomExportProblem()
        self.ui.exportDicomButton.enabled = problem is None
        self.ui.exportDicomButton.toolTip = problem or _(
            "Writes the reviewed segmentation (your edits included) as a DICOM SEG, algorithm type SEMIAUTOMATIC, "
            "and a TID 1500 report of the regions marked reviewed: new series in the input's study; then sends "
            "them when 'Send to' names a server")

    def onExportDicom(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export as DICOM failed."), waitCursor=True):
            written, sent = self.logic.exportDicom(self.ui.exportDirectoryButton.directory, self.ui.pacsLineEdit.text)
            message = _("Wrote {n} files to {folder}").format(n=len(written), folder=written[0].parent.parent)
            slicer.util.infoDisplay(f"{message}; {sent}" if sent else message)
