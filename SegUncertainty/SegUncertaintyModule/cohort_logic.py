"""The logic's cohort worklist: open a cohort's worklist.csv and review its cases one at a time."""

from __future__ import annotations

import slicer
from SegUncertaintyMRML import cohort_scene


class CohortLogic:
    """Mixed into SegUncertaintyLogic; keeps ``self.cohort`` (the open cohort_scene.CohortWorklist, or None)."""

    def openWorklist(self, path: str) -> cohort_scene.CohortWorklist:
        """Open a cohort's worklist (cohort_scene.CohortWorklist; CohortError, scene untouched, when refused); the
        cases of a worklist open before leave the scene, unless edited."""
        cohort = cohort_scene.CohortWorklist(path)
        if self.cohort is not None:
            self.cohort.unload_all(slicer.mrmlScene)
            self.forgetRemovedRun()
        self.cohort = cohort
        return cohort

    def showCase(self):
        """Load the worklist's current case if it is not in the scene (cohort_scene.CohortWorklist.load_case) and
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
