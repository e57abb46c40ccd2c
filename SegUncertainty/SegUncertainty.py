"""SegUncertainty: segment a CT or MRI volume with deep learning and show how sure the model is.

Kept thin: the widget binds the .ui to a parameter node and forwards to the logic; the logic runs the
library's command line in a background process and hands its results to the MRML glue
(SegUncertaintyMRML), which is tested outside Slicer against a real MRML scene.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from SegUncertaintyMRML import (
    corrections,
    overlays,
    persistence,
    process,
    referral,
    regions,
    results,
    scenario,
    scores_table,
    volumes,
    worklist,
)
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MAPS = ["entropy", "mutual_information", "variance"]
MINIMUM_SLICER = (5, 12)  # launchConsoleProcess(blocking=False) arrived in 5.12
DEFAULT_FLAGGED_PERCENT = 5.0  # a new map starts with the threshold that flags this % of the segmentation
STOP_TIMEOUT_S = 3.0  # how long a cancelled process tree gets to exit before it is killed
# Installed on first use, after asking (torch itself through the PyTorch extension).
PIP_REQUIREMENTS = {"monai": "monai>=1.4", "SimpleITK": "SimpleITK>=2.3", "scipy": "scipy>=1.10",
                    "matplotlib": "matplotlib>=3.7", "jsonschema": "jsonschema>=4.18",
                    "psutil": "psutil>=5.9"}


def library_dir() -> str:
    """The folder that holds SegUncertaintyLib (installed beside this module), for the child process."""
    spec = importlib.util.find_spec("SegUncertaintyLib")
    return str(Path(spec.origin).parent.parent) if spec and spec.origin else str(Path(__file__).parent)


def python_executable() -> str:
    return shutil.which("PythonSlicer") or sys.executable


def slicerVersionProblem() -> str | None:
    """A message when this Slicer is older than MINIMUM_SLICER; None when it is recent enough."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version >= MINIMUM_SLICER:
        return None
    return _("SegUncertainty needs Slicer {need} or later; this is Slicer {have}. Please update Slicer.").format(
        need="{}.{}".format(*MINIMUM_SLICER), have="{}.{}".format(*version))


def stopProcessTree(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a process and all its descendants (PythonSlicer is a launcher whose child, the interpreter,
    gets no signal from it): terminate the descendants, kill those still alive after ``timeout`` seconds,
    then terminate the process itself. The process, our child, is left for its reader to reap.
    psutil is imported here, not at module load: it is installed with the other packages at the first run."""
    import psutil

    try:
        parent = psutil.Process(pid)
        descendants = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(descendants, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    with contextlib.suppress(psutil.NoSuchProcess):
        parent.terminate()


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the panel's model list: a usable model, or one that cannot be used and says why."""

    name: str
    usable: bool
    tooltip: str  # what the model is, or why it cannot be used
    argument: str = ""  # what the command line's --model gets: the name (card models) or the model folder


def oneLine(exc: BaseException) -> str:
    """An exception as the one line a user sees (the library's messages are one line already)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SegUncertainty(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegUncertainty")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegUncertainty developers"]
        self.parent.helpText = _(
            "Segment a volume with a deep-learning model and see how sure it is: entropy, mutual information "
            "and variance maps, subject-level quality scores, and the voxels above an uncertainty threshold "
            "flagged for review and correction. Research use only, not a medical device."
        )
        self.parent.acknowledgementText = _(
            "Measurements follow five papers on segmentation uncertainty; see the extension's README."
        )


@parameterNodeWrapper
class SegUncertaintyParameterNode:
    """What the panel shows; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = "brainmask-t1"
    method: Annotated[str, Choice(list(process.METHODS))] = "ensemble+mc_dropout"
    samples: Annotated[int, WithinRange(2, 100)] = 10
    device: Annotated[str, Choice(list(process.DEVICES))] = "auto"
    segmentation: vtkMRMLSegmentationNode
    uncertaintyMap: Annotated[str, Choice(MAPS)] = "entropy"
    colormap: Annotated[str, Choice(list(overlays.COLORMAPS))] = "Inferno"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    threshold: Annotated[float, WithinRange(0.0, 10.0)] = 0.5  # nats or probability units; ln K <= 10
    regionOrder: Annotated[str, Choice(list(regions.ORDERS))] = "largest"
    minRegionMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.05


class SegUncertaintyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: a thin binding. Parameter widgets are bound by connectGui; the panel reacts to changes of
    the parameter node only (never to widget signals), and the logic decides what a change means."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._fillingModelList = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicerVersionProblem()
        if problem:
            slicer.util.errorDisplay(problem)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegUncertainty.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegUncertaintyLogic()
        self.logic.onSceneChanged = self.onLogicSceneChanged
        self.logic.onStatisticsChanged = self.updateReferral  # any edit, Undo or Redo of the segmentation

        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.ui.modelComboBox.currentTextChanged.connect(self.onModelChanged)
        self.ui.addModelButton.clicked.connect(self.onAddModel)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.showCurveButton.clicked.connect(self.onShowCurve)
        self.ui.nextRegionButton.clicked.connect(lambda: self.onStepRegion(1))
        self.ui.previousRegionButton.clicked.connect(lambda: self.onStepRegion(-1))
        self.ui.markReviewedButton.clicked.connect(self.onMarkReviewed)
        self.ui.removeRegionButton.clicked.connect(lambda: self.onCorrectRegion("remove"))
        self.ui.addRegionButton.clicked.connect(lambda: self.onCorrectRegion("add"))
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.openWorklistButton.clicked.connect(self.onOpenWorklist)
        self.ui.cohortPathLineEdit.returnPressed.connect(lambda: self.openWorklist(self.ui.cohortPathLineEdit.text))
        self.ui.previousCaseButton.clicked.connect(lambda: self.onStepCase(-1))
        self.ui.nextCaseButton.clicked.connect(lambda: self.onStepCase(1))
        self.ui.markCaseReviewedButton.clicked.connect(self.onMarkCaseReviewed)
        self.initializeParameterNode()
        self.updateCohort()

    # -- parameter node ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cleanup()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onLogicSceneChanged(self) -> None:
        """The scene was closed (logic reset) or a scene was loaded (a saved run restored)."""
        if self.logic.run is None:
            self.setParameterNode(None)
        if self.parent.isEntered:
            self.initializeParameterNode()
        else:
            self.updateButtons()

    def initializeParameterNode(self) -> None:
        params = self.logic.getParameterNode()
        if not params.inputVolume:
            params.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if self.logic.run is None:
            self.logic.restoreRun(params.segmentation)
        self.setParameterNode(params)
        if self.logic.run is not None:
            self.showRun(self.logic.run)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.updateModelList()  # on every entry: models added meanwhile (e.g. from the command line) show
            self.onParameterNodeModified()
        self.updateButtons()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Bring the panel and the views in line with the parameter node (the logic does only what changed)."""
        params = self._parameterNode
        if params is None:
            return
        if self.ui.modelComboBox.currentText != params.model:
            if self.ui.modelComboBox.findText(params.model) < 0:
                self.updateModelList()  # e.g. a loaded scene names a model not in the list: shown, disabled
            self.ui.modelComboBox.setCurrentText(params.model)
        if self.logic.applyParameters(params):
            self.updateReferral()
        self.updateButtons()
        self.updateDeviceWarning()

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

    def updateDeviceWarning(self) -> None:
        params, volume = self._parameterNode, self._parameterNode and self._parameterNode.inputVolume
        text = self.logic.deviceWarning(volume, params.model, params.method, params.samples, params.device) \
            if params and volume else ""
        self.ui.deviceWarningLabel.text = text
        self.ui.deviceWarningLabel.visible = bool(text)

    def onModelChanged(self, name: str) -> None:
        if self._parameterNode and name and not self._fillingModelList:
            self._parameterNode.model = name

    def updateModelList(self) -> None:
        """Refill the model list from the catalog (logic.modelChoices): every installed model, those that
        cannot be used disabled with their reason as tooltip. The selection stays the parameter's."""
        params = self._parameterNode
        combo = self.ui.modelComboBox
        self._fillingModelList = True  # refilling must not change the parameter (clear() and addItem emit)
        try:
            combo.clear()
            for index, choice in enumerate(self.logic.modelChoices(params.model if params else None)):
                combo.addItem(choice.name)
                combo.setItemData(index, choice.tooltip, qt.Qt.ToolTipRole)
                if not choice.usable:
                    combo.model().item(index).setEnabled(False)
            if params:
                combo.setCurrentText(params.model)
        finally:
            self._fillingModelList = False

    def onAddModel(self) -> None:
        """Ask for a model folder and install it as `seguncertainty models add` does; then select it."""
        folder = qt.QFileDialog.getExistingDirectory(
            None, _("Select a model folder (card.json, nnU-Net v2 results folder or MONAI bundle)"))
        if not folder:
            return
        name = None
        try:
            if self.logic.ensureDependencies(ask=True):  # checking a model loads its networks (torch)
                name = self.logic.addModel(folder)
        except RuntimeError as exc:
            slicer.util.errorDisplay(_("Could not add the model: ") + str(exc))
        self.updateModelList()
        if name and self._parameterNode:
            self._parameterNode.model = name  # the observer selects it in the list

    # -- running -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # a no-op while a cancel is under way: never a second run
            self.updateButtons()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.logic.ensureDependencies(ask=True):
                return
            params = self._parameterNode
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.logic.start(params.inputVolume, params.model, params.method, params.samples, params.device,
                             onProgress=self.onProgress, onLog=self.ui.logTextEdit.appendPlainText,
                             onFinished=self.onFinished)
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
        self.showScores(run.scores)
        self.ui.segmentEditorWidget.setSegmentationNode(run.segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(self.logic.inputVolume)
        if params.segmentation is not run.segmentation:
            params.segmentation = run.segmentation  # the observer shows it
        else:
            self.onParameterNodeModified()

    def showScores(self, tableNode) -> None:
        """The scores table with each row's definition as its tooltip (the Definition column hidden); an
        empty view when the run has no scores table (e.g. deleted before the scene was saved)."""
        view = self.ui.scoresTableView
        view.setMRMLTableNode(tableNode)
        if tableNode is None:
            return
        definitionColumn = scores_table.COLUMNS.index("Definition")
        model = view.tableModel()
        for row, values in enumerate(scores_table.table_rows(tableNode)):
            for column in range(min(len(values), definitionColumn + 1)):
                item = model.item(row, column)
                if item is not None and len(values) > definitionColumn:
                    item.setToolTip(values[definitionColumn])
        view.setColumnHidden(definitionColumn, True)

    # -- results and referral ------------------------------------------------------------------------
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


    # -- cohort worklist -----------------------------------------------------------------------------
    def onOpenWorklist(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, _("Open a cohort worklist"), self.ui.cohortPathLineEdit.text,
                                              _("Cohort worklist (worklist.csv);;CSV files (*.csv)"))
        if path:
            self.ui.cohortPathLineEdit.text = path
            self.openWorklist(path)

    def openWorklist(self, path: str) -> None:
        """Open a cohort's worklist.csv and load its first case (rank 1)."""
        try:
            self.logic.openWorklist(path)
        except worklist.CohortError as exc:
            slicer.util.errorDisplay(_("Could not open the worklist: ") + str(exc))
            return
        self.showCase()

    def onStepCase(self, direction: int) -> None:
        try:
            self.logic.cohort.reload()  # marks written meanwhile (another Slicer) count when skipping
        except worklist.CohortError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if self.logic.cohort.step(direction, skip=self.ui.cohortSkipCheckBox.checked):
            self.showCase()
        else:
            self.updateCohort()
            self.ui.cohortStatusLabel.text = _("No {which} case to review.").format(
                which=_("later") if direction > 0 else _("earlier"))

    def showCase(self) -> None:
        """Load the worklist's current case (on demand) and show it as the run under review."""
        try:
            nodes = self.logic.showCase()
        except worklist.CohortError as exc:
            slicer.util.errorDisplay(_("Could not load the case: ") + str(exc))
            nodes = None
        if nodes is not None:
            self._parameterNode.inputVolume = nodes.volume
            self.showRun(nodes.run)
        else:
            self.showScores(None)
        self.updateButtons()
        self.updateCohort()

    def onMarkCaseReviewed(self) -> None:
        try:
            self.logic.cohort.mark_reviewed(note=self.ui.cohortNoteLineEdit.text)
        except worklist.CohortError as exc:
            slicer.util.errorDisplay(str(exc))
        self.updateCohort()

    def updateCohort(self) -> None:
        """The worklist section: the current case (rank, case, status, priority, reason, reviewed), progress,
        the cases kept in the scene because they were edited."""
        cohort = self.logic.cohort if self.logic else None
        for name in ("previousCaseButton", "nextCaseButton", "markCaseReviewedButton", "cohortNoteLineEdit"):
            getattr(self.ui, name).enabled = cohort is not None
        if cohort is None:
            self.ui.cohortCaseLabel.text = _("Open the worklist.csv that `seguncertainty cohort` wrote.")
            self.ui.cohortStatusLabel.text = ""
            return
        self.ui.cohortCaseLabel.text = cohort.describe()
        self.ui.cohortNoteLineEdit.text = cohort.current["reviewer_note"]
        status = cohort.progress()
        if cohort.kept:
            status += _("; kept in the scene because edited: {cases}").format(cases=", ".join(cohort.kept))
        self.ui.cohortStatusLabel.text = status


class SegUncertaintyLogic(ScriptedLoadableModuleLogic, VTKObservationMixin):
    """Runs and reviews segmentations; usable from the Python console without the panel.

    Closing the scene cancels a run and resets the review state; loading a scene restores the run its
    parameter node (or, failing that, its most recent run) points to. ``onSceneChanged`` (optional) is called
    after either. Any change of the reviewed segmentation (a correction, the Segment Editor's own edits, Undo
    and Redo) recounts the statistics, then calls ``onStatisticsChanged`` (optional). ``cleanup()`` removes
    every observer (call it when done, as the panel's cleanup does).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.process = None
        self._cancelRequested = False
        self.onSceneChanged = None
        self.onStatisticsChanged = None
        self._shown: dict = {}  # the parameters last applied to the scene (applyParameters)
        self._keepThreshold = False
        self.stats: referral.ReferralStats | None = None
        self.run: results.RunNodes | None = None
        self.inputVolume = None
        self.flagging: referral.Referral | None = None
        self.navigator: regions.RegionNavigator | None = None
        self.labels = None
        self.chart = None
        self.order, self.minRegionMl = "largest", 0.0
        self._plans: dict[str, tuple[int, tuple[int, ...]] | None] = {}  # model -> (members, flip axes)
        self._cuda: bool | None = None
        self.editing: corrections.Corrections | None = None
        self._editorNode = None
        self.cohort: worklist.CohortWorklist | None = None
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

    def getParameterNode(self):
        return SegUncertaintyParameterNode(super().getParameterNode())

    # -- the scene's life ----------------------------------------------------------------------------
    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.cancel()
        self.reset()

    def onSceneEndClose(self, caller=None, event=None) -> None:
        self.reset()
        if self.onSceneChanged:
            self.onSceneChanged()

    def onSceneEndImport(self, caller=None, event=None) -> None:
        if self.run is None and self.restoreRun(self.getParameterNode().segmentation or self.latestRun()) \
                and self.onSceneChanged:
            self.onSceneChanged()

    def cleanup(self) -> None:
        """Stop a run and every observation (of the scene and of the run's segmentation)."""
        self.cancel()
        self.removeObservers()

    def reset(self) -> None:
        """Forget the run under review (its nodes are gone with the scene)."""
        if self.run is not None:
            self.removeObserver(self.run.segmentation, slicer.vtkSegmentation.SegmentModified,
                                self.onSegmentationModified)
        self.run = self.inputVolume = self.flagging = self.navigator = self.labels = self.chart = None
        self.editing = self.stats = self._editorNode = None
        self._shown, self._keepThreshold = {}, False

    def latestRun(self):
        """The segmentation node of the last run in the scene, or None."""
        runs = results.find_runs(slicer.mrmlScene)
        return list(runs.values())[-1].get("segmentation") if runs else None

    # -- models and dependencies ---------------------------------------------------------------------
    def modelNames(self) -> list[str]:
        """Names of the models that can be run."""
        return [choice.name for choice in self.modelChoices() if choice.usable]

    def modelChoices(self, current: str | None = None) -> list[ModelChoice]:
        """Every bundled and installed model (catalog.list_models), bundled first; a broken one is listed with
        its reason and hides no other. ``current`` (the parameter) is listed even when it is not installed."""
        from SegUncertaintyLib.models import catalog
        from SegUncertaintyLib.models.formats import FORMAT_NAMES

        usableCards = {folder: name for name, folder in catalog.available_models().items()}
        choices: dict[str, ModelChoice] = {}
        for entry in catalog.list_models():
            if entry.error is None or entry.folder in usableCards:
                # (a bundled card is usable before jsonschema is installed: loading it checks it)
                name = entry.name if entry.error is None else usableCards[entry.folder]
                info = entry.as_dict()
                tooltip = _("{format} ({source}): {modality}; {members} member(s); methods: {methods}").format(
                    format=FORMAT_NAMES.get(entry.format, entry.format), source=entry.source,
                    modality=info["modality"] or "?", members=info["members"] or "?",
                    methods=", ".join(info["methods"] or []) or "?")
                choice = ModelChoice(name, True, tooltip, name if entry.format == "card" else str(entry.folder))
            else:
                choice = ModelChoice(entry.name, False, _("Cannot be used: {reason} ({folder})").format(
                    reason=entry.error, folder=entry.folder))
            if choice.name in choices:
                choice = ModelChoice(choice.name, False, _("Another model has the name '{name}' ({folder})").format(
                    name=choice.name, folder=entry.folder))
                choices.setdefault(f"{choice.name} ({entry.folder})", choice)
            else:
                choices[choice.name] = choice
        if current and current not in choices:
            choices[current] = ModelChoice(current, False, _("Model '{name}' is not installed here").format(
                name=current))
        return list(choices.values())

    def modelChoice(self, name: str) -> ModelChoice:
        """The usable model ``name``; RuntimeError with the reason when it cannot be used."""
        choice = next((c for c in self.modelChoices(name) if c.name == name), None)
        if choice is None or not choice.usable:
            raise RuntimeError(_("Model '{name}' cannot be used. {reason}").format(
                name=name, reason=choice.tooltip if choice else ""))
        return choice

    def addModel(self, path: str) -> str:
        """Check and install the model at ``path`` (a model folder, or its card.json) with catalog.add_model,
        the code `seguncertainty models add` runs; returns its name. On failure nothing is installed and a
        RuntimeError carries the one-line reason."""
        from SegUncertaintyLib.models import catalog

        source = Path(path)
        if source.is_file() and source.name == "card.json":
            source = source.parent
        try:
            name, _folder = catalog.add_model(source)
        except Exception as exc:  # a model's checker may raise anything; the user gets its one line
            logging.debug("adding model %s failed", source, exc_info=True)
            raise RuntimeError(oneLine(exc)) from exc
        self._plans.pop(name, None)
        return name

    def samplingPlan(self, model: str) -> tuple[int, tuple[int, ...]] | None:
        """(ensemble members, TTA flip axes) of a card model, for the time estimate; None if unknown."""
        if model not in self._plans:
            from SegUncertaintyLib.models.card import load_card
            from SegUncertaintyLib.models.catalog import available_models

            try:
                card = load_card(available_models()[model])
                self._plans[model] = (len(card.members), card.flip_axes)
            except Exception:  # not a usable card model (or no jsonschema yet): no estimate
                self._plans[model] = None
        return self._plans[model]

    def deviceWarning(self, volume, model: str, method: str, samples: int, device: str) -> str:
        """A warning with a time estimate when the run will use the CPU; empty otherwise. The passes are
        counted as the library plans them (process.forward_passes: members, declared flips)."""
        if device == "cuda" or (device == "auto" and self.cudaAvailable()):
            return ""
        plan = self.samplingPlan(model)
        passes = process.forward_passes(method, process.samples_argument(method, samples), *plan) if plan else None
        if passes is None:
            return _("Runs on the CPU; a GPU is much faster.")
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        litres = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2]) * (bounds[5] - bounds[4]) / 1e6
        seconds = process.cpu_estimate_s(litres, passes)
        return _("Runs on the CPU: {estimate} on a 2-core machine; a GPU is much faster.").format(
            estimate=process.describe_estimate(seconds))

    def cudaAvailable(self) -> bool:
        """Whether torch sees a GPU (asked once: importing torch takes a moment; False without torch)."""
        if self._cuda is None:
            if importlib.util.find_spec("torch") is None:
                return False
            import torch

            self._cuda = bool(torch.cuda.is_available())
        return self._cuda

    @staticmethod
    def missingPackages() -> list[str]:
        return [name for name in ("torch", *PIP_REQUIREMENTS) if importlib.util.find_spec(name) is None]

    def ensureDependencies(self, ask: bool = True) -> bool:
        """Install missing torch (PyTorch extension) and Python packages, after asking; True when ready."""
        missing = self.missingPackages()
        if not missing:
            return True
        if ask and not slicer.util.confirmOkCancelDisplay(
                _("SegUncertainty needs these Python packages, not installed yet: {names}. Install them now? "
                  "This downloads several hundred MB once.").format(names=", ".join(missing))):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError(_("Install the PyTorch extension from the Extensions Manager first.")) from exc
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed."))
        requirements = [PIP_REQUIREMENTS[name] for name in missing if name in PIP_REQUIREMENTS]
        if requirements:
            slicer.util.pip_install(requirements)
        return not self.missingPackages()

    # -- the background run --------------------------------------------------------------------------
    def runState(self) -> str:
        """'idle', 'running', or 'cancelling' (from cancel() until the process has ended and onFinished ran)."""
        if self.process is None:
            return "idle"
        return "cancelling" if self._cancelRequested else "running"

    def isRunning(self) -> bool:
        """True from start() until the run's onFinished has been called, also while it is being cancelled."""
        return self.process is not None

    def start(self, inputVolume, model: str, method: str, samples: int, device: str,
              onProgress=None, onLog=None, onFinished=None) -> None:
        """Write the input to a temporary folder and start the command line there, without blocking.

        The callbacks run on the main thread (Slicer polls the process with a QTimer). onFinished(run, error)
        is called once: (RunNodes, None) on success, (None, message) otherwise, "Cancelled." after cancel().
        The scene changes only on success (new nodes).
        """
        problem = slicerVersionProblem()
        if problem:
            raise RuntimeError(problem)
        if self.isRunning():
            raise RuntimeError(_("A segmentation is already running."))
        modelArgument = self.modelChoice(model).argument
        workdir = Path(tempfile.mkdtemp(prefix="SegUncertainty-", dir=slicer.app.temporaryPath))
        volumes.write_volume(inputVolume, workdir / "input.nrrd")
        args = process.segment_command(python_executable(), str(workdir / "input.nrrd"), str(workdir / "out"),
                                       model=modelArgument, method=method,
                                       samples=process.samples_argument(method, samples), device=device)
        log: list[str] = []

        def onLine(line: str) -> None:
            progress = process.parse_line(line)
            if progress is None:
                log.append(line)
                if onLog:
                    onLog(line)
            elif onProgress and not self._cancelRequested:
                onProgress(progress)

        def onCompleted(returnCode: int) -> None:
            run, error = None, None
            try:
                if self._cancelRequested:
                    error = process.CANCELLED_MESSAGE
                elif returnCode != 0:
                    error = process.error_message(log, returnCode)
                else:
                    run = self.importRun(workdir / "out", inputVolume)
            except Exception as exc:  # reported to the user; the scene is left as it was
                error = str(exc)
            finally:
                self.process, self._cancelRequested = None, False
                shutil.rmtree(workdir, ignore_errors=True)
            if onFinished:
                onFinished(run, error)

        env = {"PYTHONPATH": os.pathsep.join(filter(None, [library_dir(), os.environ.get("PYTHONPATH")]))}
        self._cancelRequested = False
        self.process = slicer.util.launchConsoleProcess(args, updateEnvironment=env, blocking=False,
                                                        logCallback=onLine, completedCallback=onCompleted)

    def cancel(self) -> None:
        """Stop a running segmentation and its whole process tree; onFinished then reports "Cancelled."
        and the scene stays as it was. Nothing happens when no run is under way or one is being cancelled."""
        if getattr(self, "process", None) is None or self._cancelRequested:
            return
        self._cancelRequested = True
        stopProcessTree(self.process.pid)

    def importRun(self, outDir, inputVolume) -> results.RunNodes:
        return self.useRun(results.import_results(slicer.mrmlScene, outDir, inputVolume), inputVolume)

    def useRun(self, run: results.RunNodes, inputVolume) -> results.RunNodes:
        """Review this run (a new one, or one found in a reloaded scene by results.find_runs)."""
        self.reset()
        self.run, self.inputVolume = run, inputVolume
        self.addObserver(run.segmentation, slicer.vtkSegmentation.SegmentModified, self.onSegmentationModified)
        return run

    def restoreRun(self, segmentation) -> results.RunNodes | None:
        """The run a segmentation node belongs to, after a scene reload; None if it is not a run's."""
        name = segmentation.GetAttribute(results.RUN_ATTRIBUTE) if segmentation else None
        roles = results.find_runs(slicer.mrmlScene).get(name) if name else None
        if not roles:
            return None
        run = results.run_from_roles(name, roles)
        reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        if reference is None:
            return None
        self.useRun(run, reference)
        self._keepThreshold = True  # the saved threshold is the user's
        return run

    # -- the parameter node -> the scene -------------------------------------------------------------
    def applyParameters(self, params) -> set[str]:
        """Bring the views in line with the parameter node, doing only what changed since the last call:
        a new map (or run) rebuilds the referral and sets the threshold that flags DEFAULT_FLAGGED_PERCENT
        (a restored run keeps its saved threshold), a new colormap restyles the map, a new opacity fades it,
        a new threshold moves the flagged voxels, a new region order or smallest region size resets the
        regions. Returns what changed: a subset of {"map", "colormap", "opacity", "threshold", "regions"}."""
        if self.run is None or not self.run.maps:
            return set()
        shown, changed = self._shown, set()
        mapName = params.uncertaintyMap if params.uncertaintyMap in self.run.maps else next(iter(self.run.maps))
        if self.flagging is None or shown.get("map") != mapName:
            flagging = self.showMap(mapName, params.colormap, params.overlayOpacity)
            keep = self._keepThreshold and 0.0 <= params.threshold <= flagging.maximum
            self._keepThreshold = False
            threshold = params.threshold if keep else flagging.threshold_for_percent(DEFAULT_FLAGGED_PERCENT)
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
        if params.threshold != threshold:
            params.threshold = threshold  # the nested call finds nothing left to do
        return changed

    # -- review --------------------------------------------------------------------------------------
    def segmentEditorNode(self):
        if self._editorNode is None or self._editorNode.GetScene() is None:
            self._editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "SegUncertainty")
        return self._editorNode

    def structureSegmentId(self) -> str:
        segmentation = self.run.segmentation.GetSegmentation()
        return next(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                    if segmentation.GetNthSegment(i).GetName() != referral.FLAGGED_SEGMENT)

    def showMap(self, mapName: str, colormap: str, opacity: float) -> referral.Referral:
        """Show one uncertainty map over the input and prepare referral on it."""
        mapNode = self.run.maps[mapName]
        overlays.style_map(mapNode, colormap)
        overlays.show_layers(slicer.mrmlScene, self.inputVolume, mapNode, opacity)
        overlays.show_only_legend(self.run.maps.values(), mapNode)
        self.flagging = referral.Referral(self.run.segmentation, self.structureSegmentId(), mapNode, self.inputVolume)
        self.chart = self.navigator = self.labels = self.stats = None
        return self.flagging

    def setThreshold(self, threshold: float, order: str = "largest", minRegionMl: float = 0.0):
        """Update the flagged segment and its statistics (fast: no region search, see findRegions)."""
        stats = self.stats = self.flagging.set_threshold(threshold)
        self.order, self.minRegionMl = order, minRegionMl
        self.navigator = self.labels = None  # regions are found on demand, when the user steps through them
        if self.chart is not None:
            referral.update_curve_marker(self.chart, threshold)
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
            self.chart = referral.add_curve_plot(slicer.mrmlScene, self.flagging, f"{self.run.name} referral curve")
        referral.update_curve_marker(self.chart, self.flagging.threshold or 0.0)
        return self.chart

    def stepRegion(self, direction: int):
        if self.navigator is None and self.flagging is not None:
            self.findRegions()
        region = self.navigator.step(direction) if self.navigator else None
        if region is not None:
            regions.centre_views_on(slicer.mrmlScene, region.focus_ras)
        return region

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

    # -- cohort worklist -----------------------------------------------------------------------------
    def openWorklist(self, path: str) -> worklist.CohortWorklist:
        """Open a cohort's worklist (worklist.CohortWorklist; CohortError, scene untouched, when refused); the
        cases of a worklist open before leave the scene, unless edited."""
        cohort = worklist.CohortWorklist(path)
        if self.cohort is not None:
            self.cohort.unload_all(slicer.mrmlScene)
            self.forgetRemovedRun()
        self.cohort = cohort
        return cohort

    def showCase(self):
        """Load the worklist's current case if it is not in the scene (worklist.CohortWorklist.load_case) and
        review its run; None for a failed case. CohortError, the scene as it was, when it cannot load."""
        nodes = self.cohort.load_case(slicer.mrmlScene)
        if nodes is not None:
            if self.run is None or self.run.segmentation is not nodes.run.segmentation:
                self.useRun(nodes.run, nodes.volume)
        else:
            self.forgetRemovedRun()
        return nodes

    def forgetRemovedRun(self) -> None:
        """Reset the review when the run under review left the scene (its case was unloaded)."""
        if self.run is not None and self.run.segmentation.GetScene() is None:
            self.reset()


class SegUncertaintyTest(ScriptedLoadableModuleTest):
    """Self-test: the pytest suite's scenario on a synthetic head, offline, in seconds, started as the
    Segment button starts a run (logic.start: non-blocking launch, progress and completion callbacks on the
    main thread, import). Without torch and the other packages it logs that it was skipped and passes."""

    RUN_TIMEOUT_S = 600

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_Scenario()

    def test_Scenario(self):
        missing = SegUncertaintyLogic.missingPackages()
        if missing:
            message = f"SegUncertainty self-test skipped: not installed: {', '.join(missing)}"
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.delayDisplay("Segmenting a synthetic head with the bundled model")
        volume, brain = scenario.add_head_volume(slicer.mrmlScene)
        logic = SegUncertaintyLogic()
        try:
            stages, finished = [], {}
            logic.start(volume, "brainmask-t1", "ensemble", 2, "cpu", onProgress=lambda p: stages.append(p.stage),
                        onFinished=lambda run, error: finished.update(run=run, error=error))
            deadline = time.monotonic() + self.RUN_TIMEOUT_S
            while not finished and time.monotonic() < deadline:
                slicer.app.processEvents()  # the launcher's QTimer delivers progress and completion here
                time.sleep(0.05)
            self.assertTrue(finished, "the run did not finish in time")
            self.assertIsNone(finished["error"])
            self.assertEqual(stages[-1], "write")
            with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as workdir:
                report = scenario.review_run(slicer.mrmlScene, finished["run"], volume, brain, workdir)
        finally:
            logic.cleanup()  # no observer left on the scene
        self.assertGreater(report["dice"], 0.8)
        self.delayDisplay(f"Test passed: Dice {report['dice']:.3f}, {report['regions']} flagged regions")
