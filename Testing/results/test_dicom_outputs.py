"""``segment --dicom``: SEG, Parametric Maps and a TID 1500 report that the reference tools accept and read
back onto the input's exact geometry (axial, oblique and sagittal CT series), with the run's own UIDs.

Oracles: dciodvfy (Debian dicom3tools) for conformance, highdicom and dcmqi (QIICR's segimage2itkimage,
paramap2itkimage, tid1500reader) for reading back, the run's NRRD outputs for the values.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.core.manifest import read_manifest
from SegUncertaintyLib.io.dicom import series_slice_files
from SegUncertaintyLib.models.loader import load_model
from SegUncertaintyLib.results.dicom_objects import derived_uid, write_dicom_objects
from Testing.support.dicom_series import write_series
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

pytestmark = [pytest.mark.dicom, pytest.mark.slow]

BIN = Path(sys.executable).parent  # dcmqi's converters are installed beside the interpreter
SERIES = "1.2.826.0.1.3680043.2.1125.9.5"
OBLIQUE = np.array(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())
SAGITTAL = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # rows along y, columns along z, slices along x
GEOMETRIES = {"axial": None, "oblique": OBLIQUE, "sagittal": SAGITTAL}
MAPS = ("entropy", "mutual_information", "expected_entropy", "variance")
LABELMAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage (DICOM 2024, Sup 243)


def _model(folder: Path) -> Path:
    """The threshold model with a window for the series' int16 values, terminology and an anatomic region."""
    write_threshold_model(folder)
    card = json.loads((folder / "card.json").read_text())
    card["preprocessing"]["intensity"] = {"method": "window", "lower": 0, "upper": 1000}
    card["terminology"] = {"1": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                 "type": ["SCT", "4147007", "Mass"], "color": [0.9, 0.3, 0.2]}}
    card["anatomic_region"] = {"region": ["SCT", "818981001", "Abdomen"], "laterality": "U"}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _segment(source: Path, model: Path, out: Path, *extra: str) -> int:
    return cli.main(["segment", str(source), "--model", str(model), "--method", "mc_dropout", "--samples", "6",
                     "--progress", "none", "--no-overview", "--out", str(out), "--dicom", *extra])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("model") / "threshold")


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def run(request, model, tmp_path_factory) -> dict:
    """A CT series of the sphere phantom in one orientation, segmented with --dicom."""
    root = tmp_path_factory.mktemp(request.param)
    phantom = sphere_phantom(size=(20, 18, 12), spacing=(2.0, 2.5, 3.0), radius_mm=14.0)
    array = np.round(sitk.GetArrayFromImage(phantom) * 1000).astype(np.int16)
    write_series(root / "ct", array, SERIES, "phantom CT", spacing=(2.0, 2.5, 3.0),
                 direction=GEOMETRIES[request.param], modality="CT")
    assert _segment(root / "ct", model, root / "run") == 0
    return {"source": root / "ct", "run": root / "run", "dicom": root / "run" / "dicom", "tmp": root}


def _nrrd(run: dict, name: str) -> sitk.Image:
    return sitk.ReadImage(str(run["run"] / f"{name}.nrrd"))


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)


def test_manifest_lists_the_dicom_folder_and_every_object(run):
    manifest = read_manifest(run["run"])
    [entry] = [e for e in manifest["outputs"] if e["kind"] == "dicom"]
    names = {o["file"] for o in entry["objects"]}
    assert entry["file"] == "dicom" and names == {p.name for p in run["dicom"].iterdir()}
    assert names == {"segmentation.dcm", "probability_sphere.dcm", "report.dcm", *(f"{m}.dcm" for m in MAPS)}
    assert manifest["settings"]["dicom"] is True


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian dicom3tools; install.sh installs it as root)")
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
    return [line for line in report.splitlines() if line.startswith("Error")]


def test_every_object_passes_dciodvfy(run):
    for path in sorted(run["dicom"].iterdir()):
        assert _dciodvfy_errors(path) == [], path.name


def test_objects_join_the_input_study_and_reference_its_series(run):
    source = pydicom.dcmread(next(run["source"].iterdir()))
    for path in run["dicom"].iterdir():
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID.startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
        if ds.Modality != "SR":
            assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES
    uids = [pydicom.dcmread(p).SeriesInstanceUID for p in run["dicom"].iterdir()]
    assert len(set(uids)) == len(uids)  # one new series per object


def test_segmentation_reads_back_exactly_with_highdicom_and_dcmqi(run, tmp_path):
    expected = _nrrd(run, "segmentation")
    seg = hd.seg.segread(run["dicom"] / "segmentation.dcm")
    assert seg.SegmentationType == "BINARY" and seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    order = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
             for f in series_slice_files(run["source"], None)]
    pixels = seg.get_pixels_by_source_instance(order, combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(pixels, sitk.GetArrayFromImage(expected))
    subprocess.run([BIN / "segimage2itkimage", "--inputDICOM", run["dicom"] / "segmentation.dcm",
                    "--outputDirectory", tmp_path, "-t", "nrrd", "-p", "seg"], check=True, capture_output=True)
    back = sitk.ReadImage(str(tmp_path / "seg-1.nrrd"))
    _same_geometry(back, expected)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected))


def test_probability_reads_back_as_fractional_seg_within_a_255th(run, tmp_path):
    expected = sitk.GetArrayFromImage(_nrrd(run, "probability_sphere"))
    seg = hd.seg.segread(run["dicom"] / "probability_sphere.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    subprocess.run([BIN / "segimage2itkimage", "--inputDICOM", run["dicom"] / "probability_sphere.dcm",
                    "--outputDirectory", tmp_path, "-t", "nrrd", "-p", "prob"], check=True, capture_output=True)
    back = sitk.ReadImage(str(tmp_path / "prob-1.nrrd"))
    _same_geometry(back, _nrrd(run, "probability_sphere"))
    assert np.abs(sitk.GetArrayFromImage(back) / 255.0 - expected).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("name", MAPS)
def test_maps_read_back_with_dcmqi_equal_to_their_nrrd(run, name, tmp_path):
    expected = _nrrd(run, name)
    ds = pydicom.dcmread(run["dicom"] / f"{name}.dcm")
    pmap = hd.pm.ParametricMap.from_dataset(ds)
    assert pmap.pixel_array.dtype == np.float32 and pmap.NumberOfFrames == expected.GetSize()[2]
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodingSchemeDesignator == "99SEGUNC"
    result = subprocess.run([BIN / "paramap2itkimage", "--inputDICOM", run["dicom"] / f"{name}.dcm",
                             "--outputDirectory", tmp_path, "-t", "nrrd"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-500:]
    back = sitk.ReadImage(str(tmp_path / "pmap.nrrd"))
    _same_geometry(back, expected)
    assert np.array_equal(sitk.GetArrayFromImage(back).astype(np.float32), sitk.GetArrayFromImage(expected))


def test_report_reads_back_with_dcmqi_and_holds_the_scores(run, tmp_path):
    scores = json.loads((run["run"] / "scores.json").read_text())["classes"]["sphere"]
    sr = hd.sr.srread(run["dicom"] / "report.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    out = tmp_path / "report.json"
    subprocess.run([BIN / "tid1500reader", "--inputDICOM", run["dicom"] / "report.dcm", "--outputMetadata", out],
                   check=True, capture_output=True)
    [group] = json.loads(out.read_text())["Measurements"]
    values = {m["quantity"]["CodeMeaning"]: float(m["value"]) for m in group["measurementItems"]}
    assert values["Volume"] == pytest.approx(scores["volume_ml"], rel=1e-6)
    assert values["Volume 2.5th percentile over samples"] == pytest.approx(scores["volume_ml_interval95"][0], rel=1e-6)
    assert values["Volume coefficient of variation over samples"] == pytest.approx(scores["cv"], rel=1e-6)
    assert group["ReferencedSegment"] == 1
    seg = pydicom.dcmread(run["dicom"] / "segmentation.dcm")
    assert group["segmentationSOPInstanceUID"] == seg.SOPInstanceUID
    assert group["SourceSeriesForImageSegmentation"] == SERIES


def test_same_run_gives_the_same_uids_and_another_seed_others(run, model):
    def uids(folder: Path) -> dict:
        return {p.name: pydicom.dcmread(p).SOPInstanceUID for p in sorted(folder.iterdir())}

    first = uids(run["dicom"])
    assert _segment(run["source"], model, run["run"]) == 0  # again, into the same folder: replaced
    assert uids(run["dicom"]) == first
    assert _segment(run["source"], model, run["tmp"] / "seed1", "--seed", "1") == 0
    assert set(uids(run["tmp"] / "seed1" / "dicom").values()).isdisjoint(first.values())


def test_derived_uid_is_a_valid_2_25_uid():
    uid = derived_uid("key", "role")
    assert uid == derived_uid("key", "role") != derived_uid("key", "other")
    assert uid.startswith("2.25.") and len(uid) <= 64 and int(uid[5:]) < 2 ** 128


def test_dicom_needs_a_dicom_series_input_exit_2_before_anything(tmp_path, model, capsys):
    image = tmp_path / "image.nrrd"
    sitk.WriteImage(sphere_phantom(size=(8, 8, 8)), str(image))
    assert _segment(image, model, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "--dicom needs a DICOM series" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_an_empty_class_is_an_all_zero_segment(run, model, tmp_path):
    """The documented rule for empty classes: the segment is written over every frame, all zero."""
    from types import SimpleNamespace

    from SegUncertaintyLib.models.loader import load_model
    from SegUncertaintyLib.results.dicom_objects import write_dicom_objects

    empty = sitk.Image(_nrrd(run, "segmentation"))
    empty *= 0
    outputs = SimpleNamespace(segmentation=empty, probabilities={}, maps={}, method="mc_dropout",
                              scores=json.loads((run["run"] / "scores.json").read_text()))
    write_dicom_objects(outputs, tmp_path, load_model(str(model)).description,
                        series_slice_files(run["source"], None), "key", ())
    seg = hd.seg.segread(tmp_path / "segmentation.dcm")
    assert seg.number_of_segments == 1 and seg.NumberOfFrames == empty.GetSize()[2]
    assert not seg.pixel_array.any()


def _slice_order(source: Path) -> list[str]:
    return [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series_slice_files(source, None)]


def _outputs(run: dict, **changes) -> SimpleNamespace:
    """The run's outputs read back from its NRRD files (segmentation, maps, scores), with ``changes``."""
    outputs = SimpleNamespace(segmentation=_nrrd(run, "segmentation"), probabilities={}, method="mc_dropout",
                              maps={m: _nrrd(run, m) for m in MAPS},
                              scores=json.loads((run["run"] / "scores.json").read_text()))
    for name, value in changes.items():
        setattr(outputs, name, value)
    return outputs


def _dcmqi_seg(path: Path, folder: Path) -> list[Path]:
    """segimage2itkimage's NRRD files of a SEG (one per group of non-overlapping segments)."""
    folder.mkdir()
    subprocess.run([BIN / "segimage2itkimage", "--inputDICOM", path, "--outputDirectory", folder, "-t", "nrrd",
                    "-p", "seg"], check=True, capture_output=True)
    return sorted(folder.glob("seg-*.nrrd"))


def test_seg_type_labelmap_needs_dicom_and_a_known_type(tmp_path, model, capsys):
    image = tmp_path / "image.nrrd"
    sitk.WriteImage(sphere_phantom(size=(8, 8, 8)), str(image))
    base = ["segment", str(image), "--model", str(model), "--out", str(tmp_path / "o"), "--progress", "none"]
    assert cli.main([*base, "--seg-type", "labelmap"]) == 2
    assert "--seg-type labelmap" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert cli.main([*base, "--dicom", "--seg-type", "bitmap"]) == 2
    assert "invalid choice: 'bitmap'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def labelmap_run(model, tmp_path_factory) -> dict:
    """The oblique series segmented with --seg-type labelmap."""
    root = tmp_path_factory.mktemp("labelmap")
    phantom = sphere_phantom(size=(20, 18, 12), spacing=(2.0, 2.5, 3.0), radius_mm=14.0)
    array = np.round(sitk.GetArrayFromImage(phantom) * 1000).astype(np.int16)
    write_series(root / "ct", array, SERIES, "phantom CT", spacing=(2.0, 2.5, 3.0), direction=OBLIQUE, modality="CT")
    assert _segment(root / "ct", model, root / "run", "--seg-type", "labelmap") == 0
    return {"source": root / "ct", "run": root / "run", "dicom": root / "run" / "dicom", "tmp": root}


def test_labelmap_seg_reads_back_exactly_with_highdicom_and_dcmqi(labelmap_run, tmp_path):
    expected = _nrrd(labelmap_run, "segmentation")
    seg = hd.seg.segread(labelmap_run["dicom"] / "segmentation.dcm")
    assert seg.SOPClassUID == LABELMAP_SEG and seg.SegmentationType == "LABELMAP"
    assert [s.SegmentLabel for s in seg.SegmentSequence if s.SegmentNumber > 0] == ["sphere"]
    assert seg.SegmentSequence[-1].SegmentAlgorithmType == "AUTOMATIC"
    pixels = seg.get_pixels_by_source_instance(_slice_order(labelmap_run["source"]), combine_segments=True,
                                               skip_overlap_checks=True)
    assert np.array_equal(pixels, sitk.GetArrayFromImage(expected))
    [back] = _dcmqi_seg(labelmap_run["dicom"] / "segmentation.dcm", tmp_path / "dcmqi")
    _same_geometry(sitk.ReadImage(str(back)), expected)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(back))), sitk.GetArrayFromImage(expected))
    manifest = read_manifest(labelmap_run["run"])
    assert manifest["settings"]["seg_type"] == "labelmap"
    [entry] = [e for e in manifest["outputs"] if e["kind"] == "dicom"]
    assert {o["file"]: o["iod"] for o in entry["objects"]}["segmentation.dcm"] == "Label Map Segmentation"


def test_labelmap_seg_and_dciodvfy(labelmap_run):
    """dicom3tools releases before Label Map Segmentation Storage (DICOM 2024) do not know its IOD: they
    answer only 'Information Object Not found' (and judge its segment 0, the background the IOD allows, by
    the BINARY rule). Such a release cannot check it; a newer one must find no error."""
    errors = _dciodvfy_errors(labelmap_run["dicom"] / "segmentation.dcm")
    unknown_iod = "Error - Information Object Not found"
    if unknown_iod in errors:  # an old release still checks every attribute's VR, VM and encoding
        background = ("Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence "
                      "item number 1 (from one) with SegmentNumber of 0")
        assert set(errors) <= {unknown_iod, background}, errors
    else:
        assert errors == []


def test_labelmap_of_three_classes_with_a_gap_in_label_values(run, model, tmp_path):
    """Label values 1, 2, 4 become segments 1, 2, 3, pixel for pixel, as highdicom and dcmqi read them."""
    description = load_model(str(model)).description
    description = dataclasses.replace(description, labels={0: "background", 1: "core", 2: "rim", 4: "halo"},
                                      info={k: v for k, v in description.info.items() if k != "terminology"})
    shape = sitk.GetArrayViewFromImage(_nrrd(run, "segmentation")).shape
    labels = (np.indices(shape).sum(axis=0) % 5).astype(np.uint8)
    labels[labels == 3] = 0
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(_nrrd(run, "segmentation"))
    scores = {"classes": {name: {"volume_ml": 1.0} for name in ("core", "rim", "halo")}, "readings": {}}
    write_dicom_objects(_outputs(run, segmentation=image, maps={}, scores=scores), tmp_path / "out", description,
                        series_slice_files(run["source"], None), "key", (), seg_type="labelmap")
    seg = hd.seg.segread(tmp_path / "out" / "segmentation.dcm")
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence if s.SegmentNumber] == [
        (1, "core"), (2, "rim"), (3, "halo")]
    numbers = np.array([0, 1, 2, 0, 3])[labels]
    pixels = seg.get_pixels_by_source_instance(_slice_order(run["source"]), combine_segments=True,
                                               skip_overlap_checks=True)
    assert np.array_equal(pixels, numbers)
    read = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in _dcmqi_seg(tmp_path / "out" / "segmentation.dcm",
                                                                               tmp_path / "dcmqi")]
    assert np.array_equal(sum(read), numbers) if len(read) == 1 else \
        all(np.array_equal(r != 0, numbers == n) for n, r in enumerate(read, start=1))


def test_flagged_voxels_are_a_seg_at_the_referral_threshold(run, model, tmp_path):
    """A calibrated run's scores.json ``referral``: flagged.dcm holds exactly the voxels with its map >= the
    threshold, as highdicom and dcmqi read it back; it passes dciodvfy."""
    entropy = sitk.GetArrayFromImage(_nrrd(run, "entropy"))
    threshold = float(np.quantile(entropy[entropy > 0], 0.5))
    scores = json.loads((run["run"] / "scores.json").read_text())
    scores["referral"] = {"map": "entropy", "threshold": threshold}
    scores["calibration"] = {"id": "cal-1"}
    records = write_dicom_objects(_outputs(run, scores=scores), tmp_path / "out", load_model(str(model)).description,
                                  series_slice_files(run["source"], None), "key", MAPS)
    expected = entropy >= threshold
    assert 0 < expected.sum() < expected.size
    [record] = [r for r in records if r["file"] == "flagged.dcm"]
    assert record["voxels"] == int(expected.sum()) and record["rule"] == f"entropy >= {threshold}"
    path = tmp_path / "out" / "flagged.dcm"
    assert _dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY" and seg.SegmentSequence[0].SegmentLabel == "Flagged for review"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC" and seg.ContentDescription == record["rule"]
    assert seg.SeriesInstanceUID not in {pydicom.dcmread(tmp_path / "out" / r["file"]).SeriesInstanceUID
                                         for r in records if r["file"] != "flagged.dcm"}
    pixels = seg.get_pixels_by_source_instance(_slice_order(run["source"]), combine_segments=True,
                                               skip_overlap_checks=True)
    assert np.array_equal(pixels, expected)
    [back] = _dcmqi_seg(path, tmp_path / "dcmqi")
    _same_geometry(sitk.ReadImage(str(back)), _nrrd(run, "entropy"))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(back))), expected)


def test_a_threshold_that_flags_nothing_is_an_empty_segment_and_no_referral_no_flagged_seg(run, model, tmp_path):
    description = load_model(str(model)).description
    scores = {**json.loads((run["run"] / "scores.json").read_text()), "referral": {"map": "entropy",
                                                                                   "threshold": "+inf"}}
    write_dicom_objects(_outputs(run, scores=scores), tmp_path / "inf", description,
                        series_slice_files(run["source"], None), "key", ())
    seg = hd.seg.segread(tmp_path / "inf" / "flagged.dcm")
    assert seg.NumberOfFrames == _nrrd(run, "entropy").GetSize()[2] and not seg.pixel_array.any()
    scores = {**scores, "referral": {"map": "entropy", "threshold": "-inf"}}
    write_dicom_objects(_outputs(run, scores=scores), tmp_path / "all", description,
                        series_slice_files(run["source"], None), "key", ())
    assert hd.seg.segread(tmp_path / "all" / "flagged.dcm").pixel_array.all()
    assert not (run["dicom"] / "flagged.dcm").exists()  # the run is not calibrated: no referral threshold
