"""The panel's cohort section: open the worklist.csv that `seguncertainty cohort` wrote, step through its
cases (optionally skipping those reviewed), mark a case reviewed with a note, and show the progress."""

from __future__ import annotations

import qt
import slicer
from SegUncertaintyMRML import cohort_scene
from slicer.i18n import tr as _


class CohortPanel:
    """Mixed into SegUncertaintyWidget (uses ``self.ui``, ``self.logic``, ``self._parameterNode``, and the
    run section's ``showRun``, ``showScores``, ``updateButtons``)."""

    def setupCohortPanel(self) -> None:
        self.ui.openWorklistButton.clicked.connect(self.onOpenWorklist)
        self.ui.cohortPathLineEdit.returnPressed.connect(lambda: self.openWorklist(self.ui.cohortPathLineEdit.text))
        self.ui.previousCaseButton.clicked.connect(lambda: self.onStepCase(-1))
        self.ui.nextCaseButton.clicked.connect(lambda: self.onStepCase(1))
        self.ui.markCaseReviewedButton.clicked.connect(self.onMarkCaseReviewed)

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
        except cohort_scene.CohortError as exc:
            slicer.util.errorDisplay(_("Could not open the worklist: ") + str(exc))
            return
        self.showCase()

    def onStepCase(self, direction: int) -> None:
        try:
            self.logic.cohort.reload()  # marks written meanwhile (another Slicer) count when skipping
        except cohort_scene.CohortError as exc:
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
        except cohort_scene.CohortError as exc:
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
        except cohort_scene.CohortError as exc:
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
