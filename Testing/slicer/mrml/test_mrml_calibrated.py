"""A calibrated run in the scene (issue 21 §2): real ``seguncertainty calibrate`` and ``segment`` runs imported
through the MRML glue; the slider threshold flags exactly the calibration's voxels, the guarantee sentence
follows the threshold, and the scores table shows the predicted Dice with its interval and the
out-of-calibration warning as scores.json states them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import slicer
from SegUncertaintyMRML import calibrated_referral, flagged_voxels, results, scores_table, segments, volumes

from SegUncertaintyLib.calibration.apply import OUTSIDE

pytestmark = pytest.mark.slow


def _import(scene, runs, name):
    volume = volumes.read_volume(scene, runs["input"][name], name)
    return results.import_results(scene, runs[name], volume), volume


def _scores(folder) -> dict:
    return json.loads((folder / "scores.json").read_text())


def test_the_slider_threshold_flags_exactly_the_calibrated_voxels(mrml_scene, calibrated_runs):
    run, volume = _import(mrml_scene, calibrated_runs, "inside")
    referral = _scores(calibrated_runs["inside"])["referral"]
    assert run.referral == referral and run.referral["map"] == "entropy"
    lambda_hat = calibrated_referral.calibrated_threshold(referral)
    assert math.isfinite(lambda_hat) and lambda_hat > 0, "the phantoms give a finite threshold"
    brain = segments.segment_id_by_name(run.segmentation, "sphere")
    referral_view = flagged_voxels.Referral(run.segmentation, brain, run.maps["entropy"], volume)
    t = calibrated_referral.slider_threshold(referral, referral_view.maximum)
    stats = referral_view.set_threshold(t)
    entropy = slicer.util.arrayFromVolume(run.maps["entropy"])
    calibrated = entropy >= lambda_hat  # the library's rule (calibration/apply.py)
    assert np.array_equal(referral_view.mask, calibrated)
    assert stats.volume_ml == pytest.approx(referral["flagged_ml"])  # the workload scores.json states
    assert calibrated_referral.guarantee_holds(referral, t)
    assert not calibrated_referral.guarantee_holds(referral, float(np.nextafter(np.float32(t), np.float32(1))))


def test_the_guarantee_sentence_follows_the_threshold(mrml_scene, calibrated_runs):
    run, _ = _import(mrml_scene, calibrated_runs, "inside")
    referral = run.referral
    lambda_hat = calibrated_referral.calibrated_threshold(referral)
    t = calibrated_referral.slider_threshold(referral, 1.0)
    at = calibrated_referral.guarantee_text(referral, "entropy", t, 1.0)
    assert at.startswith("At the calibrated threshold") and referral["guarantee"] in at
    above = calibrated_referral.guarantee_text(referral, "entropy", lambda_hat * 1.5, 1.0)
    assert "no longer holds at this threshold" in above and referral["guarantee"] not in above
    below = calibrated_referral.guarantee_text(referral, "entropy", lambda_hat * 0.5, 1.0)
    assert below.startswith("Below") and "still holds" in below
    assert calibrated_referral.guarantee_text(referral, "entropy", t, 1.0) == at  # moving back restores it
    other = calibrated_referral.guarantee_text(referral, "variance", t, 1.0)
    assert "no guarantee holds on variance" in other
    uncalibrated = calibrated_referral.guarantee_text(None, "entropy", t, 1.0)
    assert "seguncertainty calibrate" in uncalibrated and "\n" not in uncalibrated
    assert uncalibrated == calibrated_referral.NOT_CALIBRATED


def test_infinite_thresholds_are_stated_exactly():
    nothing = {"threshold": "+inf", "map": "entropy", "alpha": 0.2, "n_calibration": 10, "guarantee": "G."}
    assert calibrated_referral.slider_threshold(nothing, 0.7) == 0.7
    assert calibrated_referral.guarantee_holds(nothing, 0.7)
    everything = dict(nothing, threshold="-inf")
    assert not calibrated_referral.guarantee_holds(everything, 0.0)
    assert "no guarantee holds" in calibrated_referral.guarantee_text(everything, "entropy", 0.0, 0.7)


def test_scores_table_shows_the_predicted_dice_with_its_interval(mrml_scene, calibrated_runs):
    run, _ = _import(mrml_scene, calibrated_runs, "inside")
    predicted = _scores(calibrated_runs["inside"])["classes"]["sphere"]["predicted_dice"]
    rows = {(r[0], r[1]): r for r in scores_table.table_rows(run.scores)}
    row = rows[("sphere", "predicted Dice")]
    lo, hi = predicted["interval"]
    assert row[2] == f"{predicted['value']:.3f} ({lo:.3f} - {hi:.3f}, nominal coverage 80 %)"
    assert ("outside" in row[3]) == bool(predicted.get("outside_calibration"))
    assert "CV+" in row[4]


def test_a_case_outside_the_calibration_data_says_the_guarantee_does_not_apply(mrml_scene, calibrated_runs):
    scores = _scores(calibrated_runs["outside"])
    assert scores["classes"]["sphere"]["predicted_dice"].get("outside_calibration"), "the phantom is outside"
    run, _ = _import(mrml_scene, calibrated_runs, "outside")
    row = next(r for r in scores_table.table_rows(run.scores) if r[1] == "predicted Dice")
    assert row[3] == OUTSIDE
    text = calibrated_referral.guarantee_text(run.referral, "entropy",
                                              calibrated_referral.slider_threshold(run.referral, 1.0), 1.0)
    assert text.endswith(f"This case: {OUTSIDE}.")


def test_referral_survives_a_scene_reload(mrml_scene, calibrated_runs, tmp_path):
    """The referral and the manifest are node attributes: saved with the scene, found again by find_runs."""
    from SegUncertaintyMRML import persistence

    from Testing.support import slicer_headless

    run, _ = _import(mrml_scene, calibrated_runs, "inside")
    persistence.save_scene(mrml_scene, tmp_path / "scene.mrb")
    scene = slicer_headless.new_scene(tmp_path / "home2")
    persistence.load_scene(scene, tmp_path / "scene.mrb", slicer.app_logic)
    [(name, roles)] = results.find_runs(scene).items()
    restored = results.run_from_roles(name, roles)
    assert restored.referral == run.referral and restored.manifest == run.manifest
