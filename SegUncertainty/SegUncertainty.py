"""SegUncertainty: segment a CT or MRI volume with deep learning and show how sure the model is.

The entry point Slicer loads: the module, its panel and its self-test, in the shape of Slicer's scripted-module
template. Kept thin: the panel binds the .ui to a parameter node and composes its sections, and the logic runs
the library's command line in a background process and hands its results to the MRML glue. Both live in
SegUncertaintyModule (one file per concern); the MRML glue in SegUncertaintyMRML is tested outside Slicer
against a real MRML scene.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time

import SegUncertaintyModule
import SegUncertaintyMRML
import slicer
import vtk
from SegUncertaintyModule import scenario
from SegUncertaintyModule.cohort_panel import CohortPanel
from SegUncertaintyModule.environment import slicerVersionProblem
from SegUncertaintyModule.logic import SegUncertaintyLogic
from SegUncertaintyModule.models_panel import ModelsPanel
from SegUncertaintyModule.parameters import SegUncertaintyParameterNode
from SegUncertaintyModule.review_panel import ReviewPanel
from SegUncertaintyModule.run_panel import RunPanel, inputCandidates
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

__all__ = ["SegUncertainty", "SegUncertaintyLogic", "SegUncertaintyParameterNode", "SegUncertaintyTest",
           "SegUncertaintyWidget"]


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



class SegUncertaintyWidget(ModelsPanel, RunPanel, ReviewPanel, CohortPanel, ScriptedLoadableModuleWidget,
                           VTKObservationMixin):
    """The panel: a thin binding. Parameter widgets are bound by connectGui; the panel reacts to changes of
    the parameter node only (never to widget signals), and the logic decides what a change means. Each
    section (model list, run, results and referral, cohort) is a part of SegUncertaintyModule."""

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

        # The embedded Segment Editor's life, as Modules/Scripted/SegmentEditor/SegmentEditor.py (Slicer 5.12,
        # lines 67-76 and 81-156) handles it: effects registered later are listed, its editor node is selected
        # again after the scene was closed or imported (before the logic's observers restore a run: priority).
        self.selectSegmentEditorNode()
        self._effectFactory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self._effectFactory.connect("effectRegistered(QString)", self.onEffectRegistered)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndCloseOrImport,
                         priority=1.0)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndCloseOrImport,
                         priority=1.0)
        self.ui.exportDirectoryButton.directory = slicer.app.defaultScenePath  # not the process's working folder
        self.setupModelsPanel()
        self.setupRunPanel()
        self.setupReviewPanel()
        self.setupCohortPanel()
        self.initializeParameterNode()
        self.updateCohort()

    def onReload(self) -> None:
        """Developer mode's Reload: Slicer executes SegUncertainty.py again (slicer.util.reloadScriptedModule),
        which would import the parts it is built from as they were; they are reloaded first, in import order (the MRML
        glue first: the module's parts import it)."""
        for package in (SegUncertaintyMRML, SegUncertaintyModule):
            for part in package.PARTS:
                importlib.reload(importlib.import_module(f"{package.__name__}.{part}"))
        ScriptedLoadableModuleWidget.onReload(self)

    # -- parameter node ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.logic is not None:  # None when setup() stopped early (Slicer too old): nothing was built
            self._effectFactory.disconnect("effectRegistered(QString)", self.onEffectRegistered)
            self.logic.cleanup()
            self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:
            self.selectSegmentEditorNode()
            self.initializeParameterNode()

    def exit(self) -> None:
        if self.logic is None:
            return
        # an active effect (Paint...) would go on editing the run from other modules
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.removeViewObservations()
        self.setParameterNode(None)

    # -- the embedded Segment Editor -----------------------------------------------------------------
    def selectSegmentEditorNode(self) -> None:
        """Give the embedded editor the scene's SegUncertainty editor node (a new one after Close Scene)."""
        node = self.logic.segmentEditorNode()
        if self.ui.segmentEditorWidget.mrmlSegmentEditorNode() is not node:
            self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(node)

    def onEffectRegistered(self, name=None) -> None:
        self.ui.segmentEditorWidget.updateEffectList()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.segmentEditorWidget.removeViewObservations()

    def onSceneEndCloseOrImport(self, caller=None, event=None) -> None:
        if self.parent.isEntered:
            self.selectSegmentEditorNode()

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
        self.updateInputSelector()
        if not params.inputVolume:
            params.inputVolume = next(iter(inputCandidates()), None)
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
            self.updateReferral()  # connectGui reset the threshold slider's range to the parameter's 0-10
        self.updateButtons()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Bring the panel and the views in line with the parameter node (the logic does only what changed)."""
        params = self._parameterNode
        if params is None:
            return
        self.showMethod()
        if self.ui.modelComboBox.currentText != params.model:
            if self.ui.modelComboBox.findText(params.model) < 0:
                self.updateModelList()  # e.g. a loaded scene names a model not in the list: shown, disabled
            self.ui.modelComboBox.setCurrentText(params.model)
        self.updateBackendOptions()
        if self.logic.applyParameters(params):
            self.updateReferral()
        self.updateButtons()
        self.updateDeviceWarning()


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
