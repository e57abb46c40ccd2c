"""Export as DICOM (issue 22 §3) through the MRML glue on a real scene: a run of a CT series, corrected with the
segment editor logic and its regions marked reviewed, written as a SEMIAUTOMATIC SEG and a TID 1500 SR by the
library's results/dicom_review.py. Oracles: highdicom reads both back, dciodvfy (Debian dicom3tools) checks
conformance, the segmentation node's own voxels are the expected pixels."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import slicer
from SegUncertaintyMRML import corrections, dicom_export, flagged_voxels, regions, results, segments, volumes

from SegUncertaintyLib.core.errors import UsageError
from SegUncertaintyLib.results.dicom_review import export_review

pytestmark = [pytest.mark.slow, pytest.mark.dicom]


def export(run, volume, folder, file_for_instance):
    """Export as DICOM as the module's logic does it: the glue gathers, the library writes."""
    return export_review(folder, **dicom_export.review_inputs(run, volume, file_for_instance))


def loaded_series(scene, dicom_run):
    """The series' volume as Slicer's DICOM module leaves it: the node carries the instances' UIDs in slice
    order (DICOMScalarVolumePlugin.load); returns (volume, UID -> file lookup as slicer.dicomDatabase gives)."""
    volume = volumes.read_volume(scene, dicom_run["volume"], "CT")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in dicom_run["files"]]
    volume.SetAttribute(dicom_export.INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    files = dict(zip(uids, map(str, dicom_run["files"]), strict=True))
    return volume, lambda uid: files.get(uid, "")


def reviewed_run(scene, dicom_run):
    """Import the run, flag the most uncertain voxels, remove the largest flagged region from the segment
    (the editor logic, undoable as in Slicer), add a block of voxels, and mark the first two regions reviewed."""
    volume, lookup = loaded_series(scene, dicom_run)
    run = results.import_results(scene, dicom_run["run"], volume)
    sphere = segments.segment_id_by_name(run.segmentation, "sphere")
    original = segments.segment_mask(run.segmentation, sphere, volume)
    referral = flagged_voxels.Referral(run.segmentation, sphere, run.maps["entropy"], volume)
    threshold = referral.threshold_for_percent(10.0)
    referral.set_threshold(threshold)
    labels, found = regions.find_regions(referral.mask, referral.values, volumes.ijk_to_ras(volume),
                                         referral.voxel_ml, order="largest")
    assert len(found) >= 2
    editing = corrections.Corrections(corrections.editor_logic(scene, run.segmentation, volume), run.segmentation,
                                      volume)
    assert editing.apply(sphere, labels == found[0].label, "remove") > 0
    block = np.zeros_like(original)
    block[:2, :3, :3] = True
    assert editing.apply(sphere, block, "add") > 0
    corrections.save_review_state(run.segmentation, "map:entropy", threshold, "largest",
                                  {found[0].label, found[1].label})
    edited = segments.segment_mask(run.segmentation, sphere, volume)
    assert not np.array_equal(edited, original)
    return run, volume, lookup, edited, found[:2]


@pytest.fixture
def exported(mrml_scene, dicom_run, tmp_path):
    run, volume, lookup, edited, reviewed = reviewed_run(mrml_scene, dicom_run)
    written = export(run, volume, tmp_path / "export", lookup)
    return {"run": run, "volume": volume, "lookup": lookup, "edited": edited, "reviewed": reviewed,
            "seg": written[0], "sr": written[1], "folder": tmp_path / "export"}


def test_seg_holds_the_edited_segmentation_as_semiautomatic(exported, dicom_run):
    seg = hd.seg.segread(exported["seg"])
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 1
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC" and segment.SegmentLabel == "sphere"
    assert segment.SegmentAlgorithmName == exported["run"].manifest["model"]["name"]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"  # the card's terminology
    order = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dicom_run["files"]]
    pixels = seg.get_pixels_by_source_instance(order, combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(pixels.astype(bool), exported["edited"])


def test_objects_are_new_series_in_the_input_study_referencing_its_series(exported, dicom_run):
    source = pydicom.dcmread(dicom_run["files"][0], stop_before_pixels=True)
    seg, sr = pydicom.dcmread(exported["seg"]), pydicom.dcmread(exported["sr"])
    for ds in (seg, sr):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID.startswith("2.25.")
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dicom_run["uid"]
    evidence = {s.SeriesInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for s in study.ReferencedSeriesSequence}
    assert evidence == {dicom_run["uid"], seg.SeriesInstanceUID}


def test_report_lists_the_reviewed_regions(exported):
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(exported["sr"]))
    groups = report.content.get_volumetric_roi_measurement_groups()
    by_id = {g.tracking_identifier: g for g in groups}
    reviewed = [k for k in by_id if k.startswith("Reviewed region")]
    assert sorted(reviewed) == ["Reviewed region 1", "Reviewed region 2"]
    voxel_ml = volumes.voxel_volume_ml(exported["volume"])
    for number, region in enumerate(exported["reviewed"], start=1):
        group = by_id[f"Reviewed region {number}"]
        [volume] = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
        assert volume.value == pytest.approx(region.volume_ml)
        [status] = group.get_qualitative_evaluations()
        assert status.value.meaning == "Reviewed by a reader"
    sphere = by_id["sphere"]
    [volume] = sphere.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
    assert volume.value == pytest.approx(exported["edited"].sum() * voxel_ml)
    segment = sphere.referenced_segment  # TID 1411: the class's group references its segment of the SEG
    assert segment.referenced_sop_instance_uid == pydicom.dcmread(exported["seg"]).SOPInstanceUID
    assert list(segment.referenced_segment_numbers) == [1]


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian dicom3tools; install.sh installs it as root)")
def test_both_objects_pass_dciodvfy(exported):
    for path in (exported["seg"], exported["sr"]):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_uids_derive_from_the_content(exported, mrml_scene, tmp_path):
    """The same review exported again gives the same objects (a PACS keeps one copy); another edit gives new
    ones."""
    first = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in (exported["seg"], exported["sr"])}
    again = export(exported["run"], exported["volume"], tmp_path / "again",
                                               exported["lookup"])
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in again[:2]} == first
    sphere = segments.segment_id_by_name(exported["run"].segmentation, "sphere")
    editing = corrections.Corrections(corrections.editor_logic(mrml_scene, exported["run"].segmentation,
                                                               exported["volume"]),
                                      exported["run"].segmentation, exported["volume"])
    block = np.zeros_like(exported["edited"])
    block[-2:, -3:, -3:] = True
    assert editing.apply(sphere, block, "add") > 0
    changed = export(exported["run"], exported["volume"], tmp_path / "changed",
                                                 exported["lookup"])
    assert not set(first.values()) & {pydicom.dcmread(p).SOPInstanceUID for p in changed[:2]}


def test_a_volume_not_from_dicom_is_refused_in_one_line(mrml_scene, dicom_run, tmp_path):
    volume = volumes.read_volume(mrml_scene, dicom_run["volume"], "plain NRRD")
    run = results.import_results(mrml_scene, dicom_run["run"], volume)
    problem = dicom_export.dicom_problem(volume)
    assert problem and "not loaded from a DICOM series" in problem and "\n" not in problem
    with pytest.raises(ValueError, match="not loaded from a DICOM series"):
        export(run, volume, tmp_path / "out", lambda uid: "")
    assert not (tmp_path / "out").exists()


def test_a_volume_off_the_series_grid_is_refused_and_nothing_written(mrml_scene, dicom_run, tmp_path):
    volume, lookup = loaded_series(mrml_scene, dicom_run)
    run = results.import_results(mrml_scene, dicom_run["run"], volume)
    matrix = volumes.ijk_to_ras(volume)
    matrix[:3, 3] += [0.0, 0.0, 1.5]  # half a slice along the normal
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    with pytest.raises(UsageError, match="does not lie on the segmentation's grid"):
        export(run, volume, tmp_path / "out", lookup)
    assert not (tmp_path / "out").exists()
