"""``segment --dicom``: SEG, Parametric Maps and a TID 1500 report that the reference tools accept and read
back onto the input's exact geometry (axial, oblique and sagittal CT series), with the run's own UIDs.

Oracles: dciodvfy (Debian dicom3tools) for conformance, highdicom and dcmqi (QIICR's segimage2itkimage,
paramap2itkimage, tid1500reader) for reading back, the run's NRRD outputs for the values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.core.manifest import read_manifest
from SegUncertaintyLib.io.dicom import series_slice_files
from SegUncertaintyLib.results.dicom_objects import derived_uid
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


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian dicom3tools; install.sh installs it as root)")
def test_every_object_passes_dciodvfy(run):
    for path in sorted(run["dicom"].iterdir()):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


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
