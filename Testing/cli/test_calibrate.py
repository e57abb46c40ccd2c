"""``seguncertainty calibrate`` on labelled phantoms segmented by the tiny threshold model, and applying its
calibration file in later ``segment`` and ``cohort`` runs (only for the same weights, method and samples)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.calibration.apply import OUTSIDE, calibrated_scores, outside_calibration
from SegUncertaintyLib.calibration.risk_control import conformal_risk_threshold, error_values
from SegUncertaintyLib.calibration.store import list_calibrations, read_calibration, threshold_from_json, validate
from SegUncertaintyLib.calibration.temperature import fit_temperature
from SegUncertaintyLib.core.errors import UsageError
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

SIZE, SPACING = (20, 20, 20), (3.0, 3.0, 3.0)


def labelled_set(folder, n, seed=0):
    """n phantoms named nnU-Net style (case_XX_0000.nii.gz) with references case_XX.nii.gz: spheres of
    varying radius, edge blur and noise; the reference is the noiseless sphere (value >= 0.5)."""
    rng = np.random.default_rng(seed)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for i in range(n):
        radius, blur, noise = rng.uniform(12, 22), rng.uniform(1, 6), rng.uniform(0.0, 0.25)
        clean = sphere_phantom(SIZE, SPACING, radius, blur, origin=(0.0, 0.0, 0.0))
        noisy = sphere_phantom(SIZE, SPACING, radius, blur, origin=(0.0, 0.0, 0.0), noise=noise, seed=i)
        reference = sitk.Cast(clean >= 0.5, sitk.sitkUInt8)
        sitk.WriteImage(noisy, str(images / f"case_{i:02d}_0000.nii.gz"))
        sitk.WriteImage(reference, str(labels / f"case_{i:02d}.nii.gz"))
    return images, labels


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One calibrate run on 12 cases (mc_dropout, 4 samples) in an isolated SEGUNCERTAINTY_HOME."""
    root = tmp_path_factory.mktemp("calibrate")
    home = root / "home"
    model = write_threshold_model(root / "model")
    images, labels = labelled_set(root / "data", 12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGUNCERTAINTY_HOME", str(home))
        code = cli.main(["calibrate", str(model), "--images", str(images), "--labels", str(labels), "--method",
                         "mc_dropout", "--samples", "4", "--alpha", "0.2", "--progress", "none",
                         "--out", str(root / "report")])
    return {"code": code, "root": root, "home": home, "model": model, "images": images, "labels": labels}


@pytest.mark.slow
def test_calibrate_writes_a_valid_file_whose_threshold_is_the_exact_one(calibrated, monkeypatch):
    assert calibrated["code"] == 0
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(path, doc)] = list_calibrations()
    assert path.parent == calibrated["home"] / "calibrations" and not path.is_relative_to(calibrated["model"])
    assert doc["n"] == 12 and doc["alpha"] == 0.2 and doc["method"] == "mc_dropout" and doc["samples"] == 4
    assert doc["n_samples"] == 4  # mc_dropout runs the first member only
    assert len(doc["model"]["weights"]) == 2 and all(len(c["input_sha256"]) == 64 for c in doc["cases"])
    assert {c["reference"].rsplit("/", 1)[1] for c in doc["cases"]} == {f"case_{i:02d}.nii.gz" for i in range(12)}
    # the threshold equals conformal risk control on the case folders' own maps and references
    cases = calibrated["root"] / "report" / "cases"
    errors = []
    for case in doc["cases"]:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(cases / case["case"] / "segmentation.nrrd")))
        ent = sitk.GetArrayFromImage(sitk.ReadImage(str(cases / case["case"] / "entropy.nrrd")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(case["reference"]))
        errors.append(error_values(ent, seg, ref))
    assert threshold_from_json(doc["referral"]["threshold"]) == conformal_risk_threshold(errors, 0.2).threshold
    report = (calibrated["root"] / "report" / "report.md").read_text()
    assert "not per case" in report and "1/(n+1)" in report and "Zenk" in report


@pytest.mark.slow
def test_calibrate_fits_the_temperature_on_the_kept_box_logits(calibrated, monkeypatch, tmp_path):
    """Format 2: t is the NLL minimiser over the per-pass logits kept for every case (float16, box voxels),
    with held-out before/after figures and the reliability diagram in the report."""
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(_, doc)] = list_calibrations()
    assert doc["format_version"] == 2
    kept = sorted((calibrated["root"] / "report" / "temperature").glob("*.npz"))
    assert len(kept) == 12
    logits, labels = [], []
    for path in kept:
        with np.load(path) as case:
            assert case["logits"].dtype == np.float16 and case["logits"].shape[:2] == (4, 2)  # T = 4, C = 2
            assert 0 < case["logits"].shape[2] <= 20000 and str(case["kind"]) == "logits"
            logits.append(case["logits"])
            labels.append(case["labels"])
    temperature = doc["temperature"]
    assert temperature["value"] == pytest.approx(fit_temperature(logits, labels), rel=1e-9)
    assert temperature["voxels"] == sum(y.size for y in labels) and temperature["cases"] == 12
    held = temperature["held_out"]
    assert held["folds"] == 5 and len(held["fold_temperatures"]) == 5
    assert held["after"]["nll"] <= held["before"]["nll"] + 0.01  # cross-fitted: not worse beyond noise
    assert set(held["before"]["dice"]) == {"sphere"}
    report = (calibrated["root"] / "report" / "report.md").read_text()
    assert "Temperature scaling" in report and (calibrated["root"] / "report" / "reliability_temperature.png").is_file()

    # kept logits are reused while the key holds (nothing rewritten), and collected again for another cap
    from SegUncertaintyLib.core.options import SegmentOptions
    from SegUncertaintyLib.evaluation.calibration_fit import read_labelled_case
    from SegUncertaintyLib.evaluation.temperature_fit import collect_logits

    folders = [calibrated["root"] / "report" / "cases" / c["case"] for c in doc["cases"][:2]]
    cases = [read_labelled_case(f, Path(c["reference"])) for f, c in zip(folders, doc["cases"][:2], strict=True)]
    options = SegmentOptions(model=str(calibrated["model"]), method="mc_dropout", samples=4)
    work = calibrated["root"] / "report" / "temperature"
    stamps = {f.name: (work / f"{f.name}.npz").stat().st_mtime_ns for f in folders}
    again = collect_logits(cases, folders, options, work)
    assert {f.name: (work / f"{f.name}.npz").stat().st_mtime_ns for f in folders} == stamps
    with np.load(work / f"{folders[0].name}.npz") as kept:
        assert np.array_equal(again[0][0], kept["logits"])
    smaller = collect_logits(cases, folders, options, tmp_path / "t", cap=50)
    assert smaller[0][0].shape == (4, 2, 50)
    assert np.isin(smaller[0][0].view(np.uint16), again[0][0].view(np.uint16)).all()  # the same passes' values


@pytest.mark.slow
def test_later_runs_apply_the_temperature_and_version_1_files_apply_none(calibrated, monkeypatch, tmp_path):
    from SegUncertaintyLib.calibration.store import calibration_temperature
    from SegUncertaintyLib.core.options import SegmentOptions
    from SegUncertaintyLib.inference.segment import segment_image
    from SegUncertaintyLib.models.loader import load_model

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(path, doc)] = list_calibrations()
    t = doc["temperature"]["value"]
    image = calibrated["images"] / "case_03_0000.nii.gz"
    args = ["segment", str(image), "--model", str(calibrated["model"]), "--method", "mc_dropout", "--samples", "4",
            "--no-overview", "--progress", "none"]
    assert cli.main([*args, "--out", str(tmp_path / "on")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "off"), "--calibration", "none"]) == 0
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["settings"]["calibration"]["temperature"] == t
    model = load_model(str(calibrated["model"]))
    for folder, temperature in (("on", t), ("off", 1.0)):
        direct = segment_image(sitk.ReadImage(str(image)), model, SegmentOptions(
            method="mc_dropout", samples=4, temperature=temperature)).probabilities["sphere"]
        written = sitk.ReadImage(str(next((tmp_path / folder).glob("probability_sphere*"))))
        assert np.allclose(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(direct), atol=1e-6), folder
    # a version-1 file (no temperature) stays readable and applies t = 1; a version-2 file must hold one
    old = {k: v for k, v in doc.items() if k != "temperature"} | {"format_version": 1}
    assert calibration_temperature(validate(old, "old.json")) == 1.0
    with pytest.raises(UsageError, match="temperature"):
        validate(old | {"format_version": 2}, "new.json")
    with pytest.raises(UsageError, match="not valid"):
        validate(doc | {"format_version": 3}, "future.json")


@pytest.mark.slow
def test_segment_applies_the_calibration_and_none_turns_it_off(calibrated, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(path, doc)] = list_calibrations()
    image = calibrated["images"] / "case_03_0000.nii.gz"
    args = ["segment", str(image), "--model", str(calibrated["model"]), "--method", "mc_dropout", "--samples", "4",
            "--no-overview", "--progress", "none"]
    assert cli.main([*args, "--out", str(tmp_path / "on")]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((tmp_path / "on" / "scores.json").read_text())
    referral = scores["referral"]
    assert referral["threshold"] == doc["referral"]["threshold"] and referral["n_calibration"] == 12
    assert referral["alpha"] == 0.2 and "not per case" in referral["guarantee"]
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "on" / "entropy.nrrd")))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "on" / "segmentation.nrrd")))
    flagged = int((entropy >= threshold_from_json(doc["referral"]["threshold"])).sum())
    assert referral["flagged_ml"] == pytest.approx(flagged * 27 / 1000)
    assert referral["flagged_percent_of_segment"] == pytest.approx(100 * flagged / (seg != 0).sum())
    predicted = scores["classes"]["sphere"]["predicted_dice"]
    assert predicted["coverage"] == pytest.approx(0.8)
    assert predicted["interval"][0] <= predicted["value"] <= predicted["interval"][1]
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["settings"]["calibration"]["id"] == doc["id"]
    assert manifest["settings"]["calibration"]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert "predicted Dice" in printed and "referral" in printed
    assert "the calibration cases' usual range" in printed and "the model's usual range" not in printed

    assert cli.main([*args, "--out", str(tmp_path / "off"), "--calibration", "none"]) == 0
    off = json.loads((tmp_path / "off" / "scores.json").read_text())
    assert "referral" not in off and "predicted_dice" not in off["classes"]["sphere"]
    assert "calibration" not in json.loads((tmp_path / "off" / "manifest.json").read_text())["settings"]
    assert "seguncertainty calibrate" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.dicom
def test_a_calibrated_dicom_run_writes_its_flagged_voxels_as_a_seg(calibrated, monkeypatch, tmp_path):
    """flagged.dcm holds the voxels scores.json's referral counts (its map >= its threshold)."""
    import highdicom as hd

    from Testing.support.dicom_series import write_series

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    image = sitk.ReadImage(str(calibrated["images"] / "case_03_0000.nii.gz"))
    array = np.round(sitk.GetArrayFromImage(image)).astype(np.int16)  # the phantom's 0-1 values, binarised
    write_series(tmp_path / "ct", array, "1.2.826.0.1.3680043.2.1125.9.88", spacing=image.GetSpacing(),
                 origin=image.GetOrigin(), modality="CT")
    assert cli.main(["segment", str(tmp_path / "ct"), "--model", str(calibrated["model"]), "--method", "mc_dropout",
                     "--samples", "4", "--no-overview", "--progress", "none", "--dicom", "--out",
                     str(tmp_path / "run")]) == 0
    referral = json.loads((tmp_path / "run" / "scores.json").read_text())["referral"]
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "entropy.nrrd")))
    flagged = entropy >= threshold_from_json(referral["threshold"])
    assert referral["flagged_ml"] == pytest.approx(flagged.sum() * 27 / 1000) and flagged.any()
    seg = hd.seg.segread(tmp_path / "run" / "dicom" / "flagged.dcm")
    assert seg.SegmentSequence[0].SegmentLabel == "Flagged for review"
    assert int(seg.pixel_array.sum()) == int(flagged.sum())


@pytest.mark.slow
@pytest.mark.parametrize("other", [["--method", "tta"], ["--method", "mc_dropout", "--samples", "5"]])
def test_a_calibration_is_never_applied_to_another_method_or_sample_count(calibrated, monkeypatch, tmp_path, other):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(path, _)] = list_calibrations()
    image = calibrated["images"] / "case_03_0000.nii.gz"
    args = ["segment", str(image), "--model", str(calibrated["model"]), *other, "--no-overview", "--progress", "none"]
    assert cli.main([*args, "--out", str(tmp_path / "auto")]) == 0  # auto: silently not this calibration
    assert "referral" not in json.loads((tmp_path / "auto" / "scores.json").read_text())
    assert cli.main([*args, "--out", str(tmp_path / "named"), "--calibration", str(path)]) == 2  # named: refused
    assert not (tmp_path / "named").exists()


@pytest.mark.slow
def test_a_calibration_for_other_weights_is_refused(calibrated, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(path, _)] = list_calibrations()
    other = write_threshold_model(tmp_path / "other", gains=(7.0, 5.0))
    image = calibrated["images"] / "case_03_0000.nii.gz"
    code = cli.main(["segment", str(image), "--model", str(other), "--method", "mc_dropout", "--samples", "4",
                     "--calibration", str(path), "--out", str(tmp_path / "o"), "--progress", "none"])
    assert code == 2 and "other weights" in capsys.readouterr().err


@pytest.mark.slow
def test_cohort_applies_it_and_models_list_shows_it(calibrated, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(_, doc)] = list_calibrations()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in (1, 2):
        shutil.copy(calibrated["images"] / f"case_{i:02d}_0000.nii.gz", inputs)
    assert cli.main(["cohort", str(inputs), "--model", str(calibrated["model"]), "--method", "mc_dropout",
                     "--samples", "4", "--no-overview", "--progress", "none", "--out", str(tmp_path / "c")]) == 0
    for case in (tmp_path / "c").iterdir():
        if case.is_dir():
            scores = json.loads((case / "scores.json").read_text())
            assert scores["referral"]["n_calibration"] == 12 and "predicted_dice" in scores["classes"]["sphere"]
            recorded = json.loads((case / "manifest.json").read_text())["settings"]["calibration"]
            assert recorded["id"] == doc["id"] and recorded["temperature"] == doc["temperature"]["value"]
    # models list names the model's calibrations (installed under the card's name)
    monkeypatch.setattr("SegUncertaintyLib.models.catalog.list_models", lambda verify=False: [])
    lines = cli.models.calibration_lines(doc["model"]["name"])
    assert lines == [f"calibration {doc['id']}: method mc_dropout, samples 4, n = 12, alpha = 0.2, "
                     f"{doc['created'][:10]}"]


@pytest.mark.slow
def test_fewer_than_ten_labelled_cases_exit_2_and_write_no_calibration(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    model = write_threshold_model(tmp_path / "model")
    images, labels = labelled_set(tmp_path / "data", 9)
    code = cli.main(["calibrate", str(model), "--images", str(images), "--labels", str(labels), "--method",
                     "mc_dropout", "--samples", "2", "--progress", "none", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "at least 10 labelled cases, got 9" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "calibrations").exists()


def test_missing_labels_folder_and_bad_alpha_are_refused(tmp_path, capsys):
    assert cli.main(["calibrate", "x", "--images", str(tmp_path), "--labels", str(tmp_path / "no")]) == 3
    assert cli.main(["calibrate", "x", "--images", str(tmp_path), "--labels", str(tmp_path), "--alpha", "1.5"]) == 2
    assert cli.main(["calibrate", "x", "--images", str(tmp_path), "--labels", str(tmp_path),
                     "--temperature-voxels", "-1"]) == 2
    assert "--temperature-voxels must be >= 0" in capsys.readouterr().err


def test_nnunet_names_pair_with_their_reference():
    from SegUncertaintyLib.evaluation.calibrate import reference_names

    assert reference_names("case_07_0000-1a2b3c4d", "data/case_07_0000.nii.gz")[:2] == ["case_07_0000", "case_07"]
    assert reference_names("p1", "x/p1.nrrd")[0] == "p1"


def _doc(empty_seen=False):
    training = {"scores": [[0.01 * i, 1 - 0.01 * i, 0.1, 0.1, 0.01 * i] for i in range(12)],
                "empty": [empty_seen] + [False] * 11, "dice": [0.9 - 0.02 * i for i in range(12)]}
    return {"alpha": 0.2, "n": 12, "map": "entropy", "referral": {"threshold": 0.3, "guarantee": "G"},
            "classes": {"sphere": {"predicted_dice": {"coverage": 0.8, "features": ["cv", "dpw", "ulabelled",
                                                                                     "segment_entropy", "diversity",
                                                                                     "empty"],
                                                      "training": training},
                                   "usual_ranges": {"cv": [0.0, 0.11], "dpw": [0.89, 1.0]}}}}


def test_outside_the_calibration_range_reads_that_the_guarantee_does_not_apply():
    doc = _doc()
    inside = {"cv": 0.05, "dpw": 0.95, "ulabelled": 0.1, "segment_entropy": 0.1, "diversity": 0.05,
              "empty_prediction": False}
    assert outside_calibration(doc["classes"]["sphere"], inside) == []
    assert outside_calibration(doc["classes"]["sphere"], {**inside, "cv": 0.5}) == ["cv"]
    empty = {"cv": None, "dpw": 1.0, "ulabelled": None, "segment_entropy": None, "diversity": 0.0,
             "empty_prediction": True}
    assert outside_calibration(doc["classes"]["sphere"], empty) == ["empty_prediction"]
    assert outside_calibration(_doc(empty_seen=True)["classes"]["sphere"], empty) == []
    out = calibrated_scores(doc, {"classes": {"sphere": {**inside, "cv": 0.5}}}, 10, 100, 0.027, {"id": "x"})
    assert out["readings"]["sphere"]["calibration"]["reading"] == OUTSIDE and out["referral"]["reading"] == OUTSIDE
    assert out["referral"]["flagged_ml"] == pytest.approx(0.27) and out["referral"]["flagged_percent_of_segment"] == 10
    assert not math.isnan(out["classes"]["sphere"]["predicted_dice"]["value"])


def test_schema_refuses_a_file_without_weights():
    with pytest.raises(UsageError, match="not valid"):
        validate({"format_version": 1}, "x.json")
    with pytest.raises(UsageError, match="Cannot read"):
        read_calibration("/nonexistent/c.json")


@pytest.mark.slow
def test_evaluate_reports_nll_and_ece_before_and_after_the_temperature(calibrated, monkeypatch, tmp_path):
    """A one-pass (softmax) calibration with t = 2: evaluate's *_t1 columns of the calibrated run equal the
    uncalibrated run's own top-label NLL and ECE; its own columns are after the temperature."""
    from SegUncertaintyLib.calibration.store import write_calibration
    from SegUncertaintyLib.evaluation.evaluate import evaluate_case

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(calibrated["home"]))
    [(_, doc)] = list_calibrations()
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    one_pass = doc | {"id": "one-pass", "method": "softmax", "samples": None, "n_samples": 1,
                      "temperature": doc["temperature"] | {"value": 2.0}}
    write_calibration(one_pass)
    image = calibrated["images"] / "case_03_0000.nii.gz"
    args = ["segment", str(image), "--model", str(calibrated["model"]), "--method", "softmax", "--no-overview",
            "--progress", "none"]
    assert cli.main([*args, "--out", str(tmp_path / "on")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "off"), "--calibration", "none"]) == 0
    reference = calibrated["labels"] / "case_03.nii.gz"
    [on] = evaluate_case(tmp_path / "on", reference)
    [off] = evaluate_case(tmp_path / "off", reference)
    assert on.row["temperature"] == 2.0 and off.row["temperature"] == 1.0
    assert on.row["nll_toplabel_box_t1"] == pytest.approx(off.row["nll_toplabel_box"], rel=1e-4)
    assert on.row["ece_toplabel_box_t1"] == pytest.approx(off.row["ece_toplabel_box"], abs=1e-4)
    assert on.row["nll_toplabel_box"] != pytest.approx(off.row["nll_toplabel_box"], rel=1e-2)
