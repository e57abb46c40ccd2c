"""The panel with a calibrated run (issue 21 §2) and Export as DICOM (issue 22 §3), on a real MRML scene with the
stand-ins of slicer_app_fakes / slicer_qt_fakes; the runs, the DICOM objects and the Orthanc are real.

Slicer's DICOM database is stood in for by :class:`DicomDatabase` (its one call the module makes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from Testing.support import slicer_app_fakes

slicer_app_fakes.install()
import slicer  # noqa: E402
from SegUncertaintyMRML import calibrated_referral, dicom_export, scores_table, volumes  # noqa: E402

from Testing.slicer.module.test_module_widget import clean_up_widgets, make_widget  # noqa: E402, F401

pytestmark = pytest.mark.slow


class DicomDatabase:
    """ctkDICOMDatabase (CTK Libs/DICOM/Core/ctkDICOMDatabase.cpp): ``fileForInstance(uid)`` is the stored
    file of a SOP Instance UID, "" when the database does not hold it."""

    def __init__(self, files):
        self._files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in files}

    def fileForInstance(self, uid: str) -> str:
        return self._files.get(uid, "")


def show_run(folder: Path, image: Path, name: str, uncertainty_map: str = "variance"):
    """A panel showing the run in ``folder`` of the input ``image``, as after a finished Segment."""
    volume = volumes.read_volume(slicer.mrmlScene, image, name)
    widget = make_widget()
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.uncertaintyMap = uncertainty_map
    run = widget.logic.importRun(folder, volume)
    widget.onFinished(run, None)
    return widget, run, volume


def test_calibrated_run_sets_the_threshold_to_lambda_hat_and_states_the_guarantee(mrml_scene, calibrated_runs):
    widget, run, _ = show_run(calibrated_runs["inside"], calibrated_runs["input"]["inside"], "inside")
    params, label = widget._parameterNode, widget.ui.guaranteeLabel
    referral = run.referral
    expected = calibrated_referral.slider_threshold(referral, widget.logic.flagging.maximum)
    assert params.uncertaintyMap == "entropy", "a new calibrated run shows the calibration's map"
    assert params.threshold == expected == widget.ui.thresholdSlider.value
    assert widget.logic.flagging.threshold == expected
    at = label.text
    assert at.startswith("At the calibrated threshold") and referral["guarantee"] in at

    lambda_hat = calibrated_referral.calibrated_threshold(referral)
    assert math.isfinite(lambda_hat)
    widget.ui.thresholdSlider.value = min(lambda_hat * 1.5, widget.ui.thresholdSlider.maximum)
    assert "the guarantee no longer holds at this threshold" in label.text
    widget.ui.thresholdSlider.value = expected
    assert label.text == at, "moving back restores it"
    widget.ui.thresholdSlider.value = lambda_hat / 2
    assert label.text.startswith("Below") and "still holds" in label.text

    rows = scores_table.table_rows(widget.ui.scoresTableView.mrmlTableNode())
    predicted = next(r for r in rows if r[1] == "predicted Dice")
    value = json.loads((calibrated_runs["inside"] / "scores.json").read_text())["classes"]["sphere"]["predicted_dice"]
    assert predicted[2].startswith(f"{value['value']:.3f} ({value['interval'][0]:.3f} - {value['interval'][1]:.3f}")


def test_outside_the_calibration_data_the_panel_says_the_guarantee_does_not_apply(mrml_scene, calibrated_runs):
    widget, _, _ = show_run(calibrated_runs["outside"], calibrated_runs["input"]["outside"], "outside")
    assert widget.ui.guaranteeLabel.text.endswith("This case: outside the calibration data: the guarantee does not "
                                                  "apply.")
    rows = scores_table.table_rows(widget.ui.scoresTableView.mrmlTableNode())
    assert next(r for r in rows if r[1] == "predicted Dice")[3] == \
        "outside the calibration data: the guarantee does not apply"


def test_uncalibrated_run_says_how_to_calibrate_and_keeps_the_users_map(mrml_scene, head_run):
    widget, _, _ = show_run(head_run[1], head_run[0], "head", uncertainty_map="variance")
    text = widget.ui.guaranteeLabel.text
    assert text.startswith("Not calibrated") and "seguncertainty calibrate" in text and "\n" not in text
    assert widget._parameterNode.uncertaintyMap == "variance"


# -- Export as DICOM -------------------------------------------------------------------------------------------
def test_export_as_dicom_is_disabled_with_the_reason_for_a_volume_not_from_dicom(mrml_scene, dicom_run, tmp_path):
    widget, _, _ = show_run(dicom_run["run"], dicom_run["volume"], "plain")
    button = widget.ui.exportDicomButton
    assert not button.enabled and "not loaded from a DICOM series" in button.toolTip
    with pytest.raises(RuntimeError, match="not loaded from a DICOM series") as error:
        widget.logic.exportDicom(str(tmp_path / "export"))
    assert "\n" not in str(error.value) and not (tmp_path / "export").exists()


def _dicom_panel(dicom_run, monkeypatch):
    monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabase(dicom_run["files"]), raising=False)
    volume = volumes.read_volume(slicer.mrmlScene, dicom_run["volume"], "CT")
    uids = " ".join(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in dicom_run["files"])
    volume.SetAttribute(dicom_export.INSTANCE_UIDS_ATTRIBUTE, uids)  # as Slicer's DICOM module loads a series
    widget = make_widget()
    widget._parameterNode.inputVolume = volume
    run = widget.logic.importRun(dicom_run["run"], volume)
    widget.onFinished(run, None)
    return widget, run, volume


def test_export_button_writes_the_reviewed_objects_with_the_editors_edits(mrml_scene, dicom_run, tmp_path,
                                                                          monkeypatch):
    import highdicom as hd

    widget, run, volume = _dicom_panel(dicom_run, monkeypatch)
    assert widget.ui.exportDicomButton.enabled
    widget.onStepRegion(1)
    widget.onCorrectRegion("remove")  # through the embedded Segment Editor's undo stack
    widget.onMarkReviewed()
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(run.segmentation, widget.logic.structureSegmentId(),
                                                        volume) > 0
    widget.ui.exportDirectoryButton.directory = str(tmp_path)
    slicer_app_fakes.shown_messages.clear()
    widget.ui.exportDicomButton.clicked.emit()
    [(kind, message)] = slicer_app_fakes.shown_messages
    assert kind == "infoDisplay" and "Wrote 3 files" in message
    folder = tmp_path / f"{run.name} DICOM"
    seg = hd.seg.segread(folder / "dicom" / "segmentation_reviewed.dcm")
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    order = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dicom_run["files"]]
    pixels = seg.get_pixels_by_source_instance(order, combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(pixels.astype(bool), edited)
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(folder / "dicom" / "report_reviewed.dcm"))
    ids = {g.tracking_identifier for g in report.content.get_volumetric_roi_measurement_groups()}
    assert ids == {"sphere", "Reviewed region 1"}


@pytest.mark.pacs
def test_export_and_send_to_orthanc_twice_stores_each_object_once(mrml_scene, dicom_run, tmp_path, monkeypatch,
                                                                  orthanc_server):
    widget, run, _ = _dicom_panel(dicom_run, monkeypatch)
    widget.onStepRegion(1)
    widget.onMarkReviewed()
    before = set(orthanc_server.instances())
    written, sent = widget.logic.exportDicom(str(tmp_path / "first"), orthanc_server.dicomweb)
    assert sent == f"stored 2/2 at {orthanc_server.dicomweb}"
    after = set(orthanc_server.instances())
    assert len(after - before) == 2
    written_again, sent_again = widget.logic.exportDicom(str(tmp_path / "second"), orthanc_server.dicomweb)
    assert sent_again == sent and set(orthanc_server.instances()) == after, "no duplicates"
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in written[:2]]
    assert [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in written_again[:2]] == uids
    from SegUncertaintyLib.io.dicomweb import DicomWeb

    study = str(pydicom.dcmread(written[0], stop_before_pixels=True).StudyInstanceUID)
    assert set(uids) <= DicomWeb(orthanc_server.dicomweb).instance_uids(study), "the server holds those objects"
