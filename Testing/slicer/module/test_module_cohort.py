"""The panel's "Cohort worklist" section (SegUncertaintyWidget + SegUncertaintyLogic) on a real MRML scene with a
real cohort (cohort_cases), the widgets built from the real .ui through the stand-ins of slicer_app_fakes /
slicer_qt_fakes: open, step, review the case's run, mark reviewed."""

from __future__ import annotations

import pytest

from Testing.support import slicer_app_fakes

slicer_app_fakes.install()
import slicer  # noqa: E402
from SegUncertaintyMRML.cohort_scene import CASE_ATTRIBUTE  # noqa: E402

import SegUncertainty as module  # noqa: E402
from SegUncertaintyLib.cohort import review  # noqa: E402
from SegUncertaintyLib.cohort.worklist import read_worklist  # noqa: E402
from Testing.support.cohort_cases import RANK_ORDER  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def widget(mrml_scene):
    panel = module.SegUncertaintyWidget()
    panel.setup()
    slicer_app_fakes.enter_module(panel)
    slicer_app_fakes.shown_messages.clear()
    yield panel
    panel.cleanup()


def case_volumes(scene) -> list[str]:
    return [n.GetAttribute(CASE_ATTRIBUTE) for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)
            if n.GetAttribute(CASE_ATTRIBUTE)]


def test_open_step_review_and_mark_through_the_panel(widget, cohort, mrml_scene):
    ui = widget.ui
    assert not ui.nextCaseButton.enabled and not ui.markCaseReviewedButton.enabled  # nothing open yet
    slicer_app_fakes.file_dialog_answer[0] = str(cohort)
    ui.openWorklistButton.clicked.emit()
    assert ui.cohortPathLineEdit.text == str(cohort)
    assert case_volumes(mrml_scene) == ["large"]  # rank 1 loaded, nothing else
    assert ui.cohortCaseLabel.text.startswith("Case 1 of 4 (rank 1): large, done, priority 4.00")
    params = widget._parameterNode
    assert params.inputVolume.GetAttribute(CASE_ATTRIBUTE) == "large"
    assert params.segmentation is widget.logic.run.segmentation and widget.logic.run.name == "large mc_dropout"
    assert widget.logic.flagging is not None and ui.referralCollapsibleButton.enabled  # the review panel is live
    assert widget.logic.flagging.map_node is widget.logic.run.maps["entropy"]

    ui.cohortNoteLineEdit.text = "fine"
    ui.markCaseReviewedButton.clicked.emit()
    assert {r["case"]: (r["reviewed"], r["reviewer_note"]) for r in read_worklist(cohort)}["large"] == ("yes", "fine")
    assert "Reviewed " in ui.cohortCaseLabel.text and ui.cohortStatusLabel.text == "1 of 4 cases reviewed; 1 failed"

    assert widget.logic.curveChart() is not None  # the case's plot: its nodes leave with the case
    ui.cohortSkipCheckBox.checked = False
    ui.nextCaseButton.clicked.emit()
    assert case_volumes(mrml_scene) == ["small"] and widget.logic.run.name == "small mc_dropout"
    assert not slicer.util.getNodesByClass("vtkMRMLPlotChartNode", mrml_scene)
    assert not slicer.util.getNodesByClass("vtkMRMLPlotSeriesNode", mrml_scene)
    assert params.inputVolume.GetAttribute(CASE_ATTRIBUTE) == "small" and ui.cohortNoteLineEdit.text == ""
    ui.nextCaseButton.clicked.emit()  # the failed case: its error, nothing loaded, no error box
    assert "Failed: Could not read image file" in ui.cohortCaseLabel.text
    assert case_volumes(mrml_scene) == [] and widget.logic.run is None and not ui.referralCollapsibleButton.enabled
    ui.nextCaseButton.clicked.emit()
    ui.nextCaseButton.clicked.emit()  # past the last case: stays, says so
    assert case_volumes(mrml_scene) == ["medium"] and ui.cohortStatusLabel.text == "No later case to review."

    ui.cohortSkipCheckBox.checked = True
    ui.previousCaseButton.clicked.emit()  # skips the failed case
    assert case_volumes(mrml_scene) == ["small"]
    review.mark_reviewed(cohort, "medium")  # by another reviewer meanwhile: skipped too
    ui.nextCaseButton.clicked.emit()
    assert case_volumes(mrml_scene) == ["small"] and ui.cohortStatusLabel.text == "No later case to review."
    ui.previousCaseButton.clicked.emit()  # "large" is reviewed: skipped, nothing earlier
    assert case_volumes(mrml_scene) == ["small"] and ui.cohortStatusLabel.text == "No earlier case to review."
    assert slicer_app_fakes.shown_messages == []

    reopened = module.SegUncertaintyWidget()  # a second panel (another Slicer) shows the mark on opening
    reopened.setup()
    slicer_app_fakes.enter_module(reopened)
    try:
        reopened.openWorklist(str(cohort))
        assert reopened.ui.cohortNoteLineEdit.text == "fine" and "Reviewed " in reopened.ui.cohortCaseLabel.text
    finally:
        reopened.cleanup()
    assert [r["case"] for r in widget.logic.cohort.rows] == RANK_ORDER


def test_a_refused_worklist_shows_one_message_and_leaves_the_scene(widget, cohort, mrml_scene):
    text = cohort.read_text().replace(",large,", ",../large,")
    cohort.write_text(text)
    before = [mrml_scene.GetNthNode(i).GetID() for i in range(mrml_scene.GetNumberOfNodes())]
    widget.ui.cohortPathLineEdit.text = str(cohort)
    widget.ui.cohortPathLineEdit.returnPressed.emit()
    [(kind, message)] = slicer_app_fakes.shown_messages
    assert kind == "errorDisplay" and "not a folder inside the worklist's folder" in message
    assert [mrml_scene.GetNthNode(i).GetID() for i in range(mrml_scene.GetNumberOfNodes())] == before
    assert widget.logic.cohort is None and not widget.ui.nextCaseButton.enabled
