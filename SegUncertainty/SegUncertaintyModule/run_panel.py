"""The panel's run section: the Segment / Cancel button, the CPU warning with its time estimate, the progress
bar and log, and showing a finished (or restored) run with its scores table."""

from __future__ import annotations

import slicer
import vtk
from SegUncertaintyMRML import results, scores_table
from slicer.i18n import tr as _

from . import process


def inputCandidates() -> list:
    """The volumes the input list offers: scalar volumes, not label maps (a subclass: the .ui's
    showChildNodeTypes=false), and not the maps and probabilities of earlier runs."""
    return [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetAttribute(results.ROLE_ATTRIBUTE)]


class RunPanel:
    """Mixed into SegUncertaintyWidget (uses ``self.ui``, ``self.logic``, ``self._parameterNode``)."""

    def setupRunPanel(self) -> None:
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        # the method by its readable label (process.METHOD_LABELS), bound to the parameter by index
        for label in process.METHOD_LABELS.values():
            self.ui.methodComboBox.addItem(label)
        self.ui.methodComboBox.currentIndexChanged.connect(self.onMethodChanged)
        self._scoresObserved = None  # the scores table whose rebuilds restore the tooltips

    def onMethodChanged(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(process.METHOD_LABELS):
            self._parameterNode.method = list(process.METHOD_LABELS)[index]

    def showMethod(self) -> None:
        self.ui.methodComboBox.currentIndex = list(process.METHOD_LABELS).index(self._parameterNode.method)

    def updateInputSelector(self) -> None:
        """Hide the runs' maps and probabilities from the input list (inputCandidates), by ID."""
        self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = [
            node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if node.GetAttribute(results.ROLE_ATTRIBUTE)]

    def updateButtons(self) -> None:
        """The Segment / Cancel button and which sections can be used."""
        params, state = self._parameterNode, self.logic.runState()
        text, tip = {
            "idle": (_("Segment with uncertainty"), _("Run the model in a background process; results are added "
                                                      "as new nodes")),
            "running": (_("Cancel"), _("Stop the run; the scene stays as it was")),
            "cancelling": (_("Cancelling..."), _("Waiting for the segmentation process to stop")),
        }[state]
        self.ui.applyButton.text, self.ui.applyButton.toolTip = text, tip
        self.ui.applyButton.enabled = state == "running" or (state == "idle" and bool(params and params.inputVolume))
        hasResult = self.logic.flagging is not None
        for name in ("resultsCollapsibleButton", "referralCollapsibleButton", "exportCollapsibleButton"):
            getattr(self.ui, name).enabled = hasResult
        self.updateDicomExport()
        line = process.backend_line(self.logic.run.manifest) if self.logic.run is not None else ""
        self.ui.backendLabel.text, self.ui.backendLabel.visible = line, bool(line)

    def updateBackendOptions(self) -> None:
        """The backend and precision combos (bound to the parameters): a whole-volume model runs on torch
        (logic.backendFor), so its parameters are set to what it runs and the combos disabled, saying why."""
        params = self._parameterNode
        backend, precision, reason = self.logic.backendFor(params.model, params.backend, params.precision)
        for combo, tip in ((self.ui.backendComboBox, process.BACKEND_TOOLTIP),
                           (self.ui.precisionComboBox, process.PRECISION_TOOLTIP)):
            combo.enabled, combo.toolTip = not reason, reason or tip
        if (params.backend, params.precision) != (backend, precision):
            params.backend, params.precision = backend, precision  # the observer shows them

    def updateDeviceWarning(self) -> None:
        params, volume = self._parameterNode, self._parameterNode and self._parameterNode.inputVolume
        text = self.logic.deviceWarning(volume, params.model, params.method, params.samples, params.device) \
            if params and volume else ""
        self.ui.deviceWarningLabel.text = text
        self.ui.deviceWarningLabel.visible = bool(text)

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # a no-op while a cancel is under way: never a second run
            self.updateButtons()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            params = self._parameterNode
            if not self.logic.ensureDependencies(ask=True, model=params.model):
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.logic.start(params.inputVolume, params.model, params.method, params.samples, params.device,
                             params.backend, params.precision, onProgress=self.onProgress,
                             onLog=self.ui.logTextEdit.appendPlainText, onFinished=self.onFinished)
            self.updateButtons()

    def onProgress(self, progress: process.Progress) -> None:
        self.ui.progressBar.value = int(round(100 * progress.overall))
        self.ui.stageLabel.text = f"{progress.label}: {progress.message} ({progress.elapsed_s:.0f} s)"

    def onFinished(self, run, error: str | None) -> None:
        self.updateButtons()
        if error:
            self.ui.stageLabel.text = error
            if error != process.CANCELLED_MESSAGE:
                slicer.util.errorDisplay(_("Segmentation failed: ") + error)
            return
        self.ui.stageLabel.text = _("Done: ") + run.name
        self.showRun(run)

    def showRun(self, run) -> None:
        """Show a run (new, or restored from a saved scene) through the parameter node."""
        params = self._parameterNode
        if params is None:
            return
        self.updateInputSelector()
        self.showScores(run.scores)
        self.ui.segmentEditorWidget.setSegmentationNode(run.segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(self.logic.inputVolume)
        if params.segmentation is not run.segmentation:
            params.segmentation = run.segmentation  # the observer shows it
        else:
            self.onParameterNodeModified()

    def showScores(self, tableNode) -> None:
        """The scores table with each row's definition as its tooltip (the Definition column hidden); an
        empty view when the run has no scores table (e.g. deleted before the scene was saved). qMRMLTableView
        makes new items whenever the table node is modified, so the tooltips are set again after each
        rebuild (an observer of lower priority than the view's)."""
        if self._scoresObserved is not None:
            self.removeObserver(self._scoresObserved, vtk.vtkCommand.ModifiedEvent, self.onScoresModified)
            self._scoresObserved = None
        self.ui.scoresTableView.setMRMLTableNode(tableNode)
        if tableNode is None:
            return
        self._scoresObserved = tableNode
        self.addObserver(tableNode, vtk.vtkCommand.ModifiedEvent, self.onScoresModified, priority=-1.0)
        self.setScoreTooltips(tableNode)

    def onScoresModified(self, caller=None, event=None) -> None:
        self.setScoreTooltips(caller)

    def setScoreTooltips(self, tableNode) -> None:
        view = self.ui.scoresTableView
        definitionColumn = scores_table.COLUMNS.index("Definition")
        model = view.tableModel()
        for row, values in enumerate(scores_table.table_rows(tableNode)):
            for column in range(min(len(values), definitionColumn + 1)):
                item = model.item(row, column)
                if item is not None and len(values) > definitionColumn:
                    item.setToolTip(values[definitionColumn])
        view.setColumnHidden(definitionColumn, True)
