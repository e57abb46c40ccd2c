"""SegUncertainty: segment a CT or MRI volume with deep learning and show how sure the model is.

Kept thin: the widget binds the .ui to a parameter node and forwards to the logic; the logic runs the
library's command line in a background process and hands its results to the MRML glue
(SegUncertaintyMRML), which is tested outside Slicer against a real MRML scene.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

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
# Installed on first use, after asking (torch itself through the PyTorch extension).
PIP_REQUIREMENTS = {"monai": "monai>=1.4", "SimpleITK": "SimpleITK>=2.3", "scipy": "scipy>=1.10",
                    "matplotlib": "matplotlib>=3.7", "jsonschema": "jsonschema>=4.18"}


def library_dir() -> str:
    """The folder that holds SegUncertaintyLib (installed beside this module), for the child process."""
    spec = importlib.util.find_spec("SegUncertaintyLib")
    return str(Path(spec.origin).parent.parent) if spec and spec.origin else str(Path(__file__).parent)


def python_executable() -> str:
    return shutil.which("PythonSlicer") or sys.executable


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
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    regionOrder: Annotated[str, Choice(list(regions.ORDERS))] = "largest"
    minRegionMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.05


class SegUncertaintyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegUncertainty.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegUncertaintyLogic()

        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.ui.modelComboBox.addItems(self.logic.modelNames())
        self.ui.modelComboBox.currentTextChanged.connect(self.onModelChanged)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.deviceComboBox.currentTextChanged.connect(lambda _text: self.updateDeviceWarning())
        self.ui.methodComboBox.currentTextChanged.connect(lambda _text: self.updateDeviceWarning())
        self.ui.thresholdSlider.valueChanged.connect(self.onThresholdChanged)
        self.ui.opacitySlider.valueChanged.connect(lambda value: overlays.set_overlay_opacity(slicer.mrmlScene, value))
        self.ui.mapComboBox.currentTextChanged.connect(lambda _text: self.onResultsDisplayChanged())
        self.ui.colormapComboBox.currentTextChanged.connect(lambda _text: self.onResultsDisplayChanged())
        self.ui.regionOrderComboBox.currentTextChanged.connect(lambda _text: self.onRegionSettingsChanged())
        self.ui.minRegionSpinBox.valueChanged.connect(lambda _value: self.onRegionSettingsChanged())
        self.ui.showCurveButton.clicked.connect(self.onShowCurve)
        self.ui.nextRegionButton.clicked.connect(lambda: self.onStepRegion(1))
        self.ui.previousRegionButton.clicked.connect(lambda: self.onStepRegion(-1))
        self.ui.markReviewedButton.clicked.connect(self.onMarkReviewed)
        self.ui.removeRegionButton.clicked.connect(lambda: self.onCorrectRegion("remove"))
        self.ui.addRegionButton.clicked.connect(lambda: self.onCorrectRegion("add"))
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.exportButton.clicked.connect(self.onExport)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    # -- parameter node ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if self.logic.run is None and self.logic.restoreRun(self._parameterNode.segmentation):
            self.onFinished(self.logic.run, None)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.ui.modelComboBox.setCurrentText(self._parameterNode.model)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        params = self._parameterNode
        running = self.logic.isRunning()
        self.ui.applyButton.text = _("Cancel") if running else _("Segment with uncertainty")
        self.ui.applyButton.enabled = running or bool(params and params.inputVolume)
        self.ui.applyButton.toolTip = _("Stop the run; the scene stays as it was") if running else \
            _("Run the model in a background process; results are added as new nodes")
        hasResult = self.logic.flagging is not None
        for name in ("resultsCollapsibleButton", "referralCollapsibleButton", "exportCollapsibleButton"):
            getattr(self.ui, name).enabled = hasResult
        self.updateDeviceWarning()

    def updateDeviceWarning(self) -> None:
        params, volume = self._parameterNode, self._parameterNode and self._parameterNode.inputVolume
        text = self.logic.deviceWarning(volume, params.model, params.method, params.samples, params.device) \
            if params and volume else ""
        self.ui.deviceWarningLabel.text = text
        self.ui.deviceWarningLabel.visible = bool(text)

    def onModelChanged(self, name: str) -> None:
        if self._parameterNode and name:
            self._parameterNode.model = name

    # -- running -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
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
            self.updateGUI()

    def onProgress(self, progress: process.Progress) -> None:
        self.ui.progressBar.value = int(round(100 * progress.overall))
        self.ui.stageLabel.text = f"{progress.label}: {progress.message} ({progress.elapsed_s:.0f} s)"

    def onFinished(self, run, error: str | None) -> None:
        self.updateGUI()
        if error:
            self.ui.stageLabel.text = error
            if error != "Cancelled.":
                slicer.util.errorDisplay(_("Segmentation failed: ") + error)
            return
        self.ui.stageLabel.text = _("Done: ") + run.name
        self._parameterNode.segmentation = run.segmentation
        self.showScores(run.scores)
        self.onResultsDisplayChanged()
        self.ui.segmentEditorWidget.setSegmentationNode(run.segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(self._parameterNode.inputVolume)

    def showScores(self, tableNode) -> None:
        """The scores table with each row's definition as its tooltip (the Definition column hidden)."""
        view = self.ui.scoresTableView
        view.setMRMLTableNode(tableNode)
        definitionColumn = scores_table.COLUMNS.index("Definition")
        model = view.tableModel()
        for row, values in enumerate(scores_table.table_rows(tableNode)):
            for column in range(len(values)):
                item = model.item(row, column)
                if item is not None:
                    item.setToolTip(values[definitionColumn])
        view.setColumnHidden(definitionColumn, True)

    # -- results and referral ------------------------------------------------------------------------
    def onResultsDisplayChanged(self) -> None:
        params = self._parameterNode
        if self.logic.run is None or params is None:
            return
        flagging = self.logic.showMap(params.uncertaintyMap, params.colormap, params.overlayOpacity)
        self.ui.thresholdSlider.maximum = max(flagging.maximum, 1e-6)
        self.ui.thresholdSlider.singleStep = self.ui.thresholdSlider.maximum / 1000
        params.threshold = flagging.threshold_for_percent(5.0)
        self.onThresholdChanged(params.threshold)
        self.updateGUI()

    def onThresholdChanged(self, value: float) -> None:
        if self.logic.flagging is None:
            return
        stats = self.logic.setThreshold(value, self._parameterNode.regionOrder, self._parameterNode.minRegionMl)
        self.ui.flaggedStatsLabel.text = _(
            "{voxels} voxels flagged ({ml:.1f} mL, {pct:.1f} % of the segmentation; {inside} inside it)"
        ).format(voxels=stats.voxels, ml=stats.volume_ml, pct=stats.percent_of_segmentation,
                 inside=stats.inside_segmentation)
        self.updateRegionLabels()

    def onRegionSettingsChanged(self) -> None:
        if self.logic.flagging is not None and self.logic.flagging.threshold is not None:
            self.onThresholdChanged(self.logic.flagging.threshold)

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
        self.ui.segmentEditorWidget.undo()

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


class SegUncertaintyLogic(ScriptedLoadableModuleLogic):
    """Runs and reviews segmentations; usable from the Python console without the panel."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.process = None
        self.run: results.RunNodes | None = None
        self.inputVolume = None
        self.flagging: referral.Referral | None = None
        self.navigator: regions.RegionNavigator | None = None
        self.labels = None
        self.chart = None
        self.order, self.minRegionMl = "largest", 0.0
        self._members: dict[str, int] = {}  # ensemble size per model name (from its card)
        self._cuda: bool | None = None
        self.editing: corrections.Corrections | None = None
        self._editorNode = None

    def getParameterNode(self):
        return SegUncertaintyParameterNode(super().getParameterNode())

    # -- models and dependencies ---------------------------------------------------------------------
    def modelNames(self) -> list[str]:
        from SegUncertaintyLib.models.catalog import available_models

        return list(available_models())

    def deviceWarning(self, volume, model: str, method: str, samples: int, device: str) -> str:
        """A warning with a time estimate when the run will use the CPU; empty otherwise."""
        if device == "cuda" or (device == "auto" and self.cudaAvailable()):
            return ""
        from SegUncertaintyLib.models.card import load_card
        from SegUncertaintyLib.models.catalog import available_models

        if model not in self._members:
            folder = available_models().get(model)
            self._members[model] = len(load_card(folder / "card.json").members) if folder else 1
        members = self._members[model]
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        litres = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2]) * (bounds[5] - bounds[4]) / 1e6
        seconds = process.cpu_estimate_s(litres, process.forward_passes(method, samples, members))
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
    def isRunning(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, inputVolume, model: str, method: str, samples: int, device: str,
              onProgress=None, onLog=None, onFinished=None) -> None:
        """Write the input to a temporary folder and start the command line there, without blocking.

        onFinished(run, error) is called once: (RunNodes, None) on success, (None, message) otherwise.
        The scene changes only on success (new nodes).
        """
        if self.isRunning():
            raise RuntimeError(_("A segmentation is already running."))
        workdir = Path(tempfile.mkdtemp(prefix="SegUncertainty-", dir=slicer.app.temporaryPath))
        volumes.write_volume(inputVolume, workdir / "input.nrrd")
        args = process.segment_command(python_executable(), str(workdir / "input.nrrd"), str(workdir / "out"),
                                       model=model, method=method, samples=samples, device=device)
        log: list[str] = []

        def onLine(line: str) -> None:
            progress = process.parse_line(line)
            if progress is None:
                log.append(line)
                if onLog:
                    onLog(line)
            elif onProgress:
                onProgress(progress)

        def onCompleted(returnCode: int) -> None:
            run, error = None, None
            try:
                if returnCode != 0:
                    error = process.error_message(log, returnCode)
                else:
                    run = self.importRun(workdir / "out", inputVolume)
            except Exception as exc:  # reported to the user; the scene is left as it was
                error = str(exc)
            finally:
                self.process = None
                shutil.rmtree(workdir, ignore_errors=True)
            if onFinished:
                onFinished(run, error)

        env = {"PYTHONPATH": os.pathsep.join(filter(None, [library_dir(), os.environ.get("PYTHONPATH")]))}
        self.process = slicer.util.launchConsoleProcess(args, updateEnvironment=env, blocking=False,
                                                        logCallback=onLine, completedCallback=onCompleted)

    def cancel(self) -> None:
        """Stop a running segmentation (the command line exits with 130 and writes nothing)."""
        if self.isRunning():
            self.process.terminate()

    def importRun(self, outDir, inputVolume) -> results.RunNodes:
        return self.useRun(results.import_results(slicer.mrmlScene, outDir, inputVolume), inputVolume)

    def useRun(self, run: results.RunNodes, inputVolume) -> results.RunNodes:
        """Review this run (a new one, or one found in a reloaded scene by results.find_runs)."""
        self.run, self.inputVolume = run, inputVolume
        self.flagging = self.navigator = self.chart = self.editing = None
        return run

    def restoreRun(self, segmentation) -> results.RunNodes | None:
        """The run a segmentation node belongs to, after a scene reload; None if it is not a run's."""
        name = segmentation.GetAttribute(results.RUN_ATTRIBUTE) if segmentation else None
        roles = results.find_runs(slicer.mrmlScene).get(name) if name else None
        if not roles:
            return None
        run = results.run_from_roles(name, roles)
        reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        return self.useRun(run, reference) if reference else None

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
        self.chart = None
        return self.flagging

    def setThreshold(self, threshold: float, order: str = "largest", minRegionMl: float = 0.0):
        """Update the flagged segment and its statistics (fast: no region search, see findRegions)."""
        stats = self.flagging.set_threshold(threshold)
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

    def export(self, folder: str) -> list[Path]:
        return persistence.export_run(slicer.mrmlScene, self.run, self.inputVolume, folder)


class SegUncertaintyTest(ScriptedLoadableModuleTest):
    """Self-test: the pytest suite's scenario, on a synthetic head, offline, in seconds (needs torch)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_Scenario()

    def test_Scenario(self):
        missing = SegUncertaintyLogic.missingPackages()
        if missing:
            self.skipTest(f"not installed: {', '.join(missing)}")
        self.delayDisplay("Segmenting a synthetic head with the bundled model")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [library_dir(), env.get("PYTHONPATH")]))
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as workdir:
            report = scenario.run_scenario(slicer.mrmlScene, workdir, python_executable(), env=env)
        self.assertGreater(report["dice"], 0.8)
        self.delayDisplay(f"Test passed: Dice {report['dice']:.3f}, {report['regions']} flagged regions")
