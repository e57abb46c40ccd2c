"""SegUncertaintyLogic: the module's logic, composed of one part per concern (models_logic, run_logic,
review_logic, cohort_logic); here its state, the scene's life (close, load) and the run under review."""

from __future__ import annotations

import slicer
from SegUncertaintyMRML import cohort_scene, corrections, flagged_voxels, regions, results
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
from slicer.util import VTKObservationMixin

from .cohort_logic import CohortLogic
from .models_logic import ModelsLogic
from .parameters import SegUncertaintyParameterNode
from .review_logic import ReviewLogic
from .run_logic import RunLogic


class SegUncertaintyLogic(ModelsLogic, RunLogic, ReviewLogic, CohortLogic, ScriptedLoadableModuleLogic,
                          VTKObservationMixin):
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
        self.stats: flagged_voxels.ReferralStats | None = None
        self.run: results.RunNodes | None = None
        self.inputVolume = None
        self.flagging: flagged_voxels.Referral | None = None
        self.navigator: regions.RegionNavigator | None = None
        self.labels = None
        self.chart = None
        self.order, self.minRegionMl = "largest", 0.0
        self._plans: dict[str, tuple[int, tuple[int, ...]] | None] = {}  # model -> (members, flip axes)
        self._formats: dict[str, str | None] = {}  # model -> format (backendFor)
        self._cuda: bool | None = None
        self.editing: corrections.Corrections | None = None
        self.cohort: cohort_scene.CohortWorklist | None = None
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
        self.editing = self.stats = None
        self._shown, self._keepThreshold = {}, False

    # -- the run under review ------------------------------------------------------------------------
    def latestRun(self):
        """The segmentation node of the last run in the scene, or None."""
        runs = results.find_runs(slicer.mrmlScene)
        return list(runs.values())[-1].get("segmentation") if runs else None

    def importRun(self, outDir, inputVolume) -> results.RunNodes:
        """Import a finished run's results; every node goes under the input's parent transform, since the
        files hold the input's own (untransformed) geometry."""
        run = results.import_results(slicer.mrmlScene, outDir, inputVolume)
        for node in run.all_nodes():
            if node is not None and hasattr(node, "SetAndObserveTransformNodeID"):
                node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        return self.useRun(run, inputVolume)

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
