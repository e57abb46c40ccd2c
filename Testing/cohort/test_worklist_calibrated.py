"""A calibrated cohort's worklist: predicted-Dice columns, the out-of-calibration column, and the order
(empty predictions, then cases outside the calibration data, then ascending predicted-Dice lower bound)."""

from __future__ import annotations

import shutil

import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.calibration.apply import calibration_reference
from SegUncertaintyLib.cohort.worklist import rank_rows, read_worklist
from SegUncertaintyLib.inference.scores import REVIEW, WITHIN
from Testing.cli.test_calibrate import SIZE, SPACING, labelled_set
from Testing.support.files import load_json
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model


def _calibrated(case, low, value=None, outside=(), empty=False, entropy=0.1):
    predicted = {"value": value if value is not None else low + 0.05, "interval": [low, min(1.0, low + 0.1)],
                 "coverage": 0.9, **({"outside_calibration": list(outside)} if outside else {})}
    return {"case": case, "status": "done", "seconds": 1.0,
            "scores": {"liver": {"volume_ml": 1.0, "segment_entropy": entropy, "empty_prediction": empty,
                                 "predicted_dice": predicted}}}


def test_calibrated_ranking_by_hand():
    results = [_calibrated("a", 0.80, entropy=0.9),      # high entropy: no matter with a calibration
               _calibrated("b", 0.40),
               _calibrated("c", 0.95, outside=["cv"]),    # outside the calibration data: before every inside case
               _calibrated("d", 0.70, outside=["dpw"]),
               _calibrated("e", 0.99, empty=True),        # empty: first
               {"case": "f", "status": "failed", "error": "boom", "seconds": 0.0, "scores": None}]
    rows = rank_rows(results, None)
    assert [r["case"] for r in rows] == ["e", "d", "c", "b", "a", "f"]
    assert [r["priority"] for r in rows] == ["0.0100", "0.3000", "0.0500", "0.6000", "0.2000", ""]
    assert [r["outside_calibration"] for r in rows] == ["no", "liver (dpw)", "liver (cv)", "no", "no", ""]
    assert rows[1]["reason"].startswith("outside the calibration data: liver (dpw): the guarantee does not apply")
    assert rows[0]["reason"].startswith("no segmentation of liver: review")
    b = rows[3]
    assert (b["liver:predicted_dice"], b["liver:predicted_dice_low"], b["liver:predicted_dice_high"]) == \
        ("0.45", "0.4", "0.5")
    assert b["reason"] == "predicted Dice lower bound 0.400, liver (predicted 0.450, interval [0.400, 0.500] at " \
                          "coverage 0.9)"


def test_a_case_is_ranked_by_its_worst_class_lower_bound():
    one = _calibrated("x", 0.9)
    one["scores"]["spleen"] = {**one["scores"]["liver"], "predicted_dice": {"value": 0.5, "interval": [0.3, 0.6],
                                                                            "coverage": 0.9}}
    rows = rank_rows([_calibrated("y", 0.5), one], None)
    assert [r["case"] for r in rows] == ["x", "y"] and "spleen" in rows[0]["reason"]


@pytest.fixture(scope="module")
def calibrated_cohort(tmp_path_factory):
    """``calibrate`` on 12 labelled phantoms (mc_dropout, 4 samples), then a ``cohort`` run that applies it
    to 3 new phantoms, a faint sphere the model misses (empty prediction), a large sphere and a noisy one."""
    root = tmp_path_factory.mktemp("calibrated_cohort")
    model = write_threshold_model(root / "model")
    images, labels = labelled_set(root / "data", 12)
    inputs = root / "in"
    new, _ = labelled_set(root / "new", 3, seed=5)
    shutil.copytree(new, inputs)
    sphere = sphere_phantom(SIZE, SPACING, 18, 2, origin=(0.0, 0.0, 0.0))
    sitk.WriteImage(sphere * 0.2, str(inputs / "faint.nii.gz"))
    sitk.WriteImage(sphere_phantom(SIZE, SPACING, 30, 1, origin=(0.0, 0.0, 0.0)), str(inputs / "big.nii.gz"))
    sitk.WriteImage(sphere_phantom(SIZE, SPACING, 18, 2, origin=(0.0, 0.0, 0.0), noise=0.8, seed=3),
                    str(inputs / "noisy.nii.gz"))
    common = ["--method", "mc_dropout", "--samples", "4", "--progress", "none"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGUNCERTAINTY_HOME", str(root / "home"))
        assert cli.main(["calibrate", str(model), "--images", str(images), "--labels", str(labels), "--alpha", "0.2",
                         *common, "--out", str(root / "report")]) == 0
        assert cli.main(["cohort", str(inputs), "--model", str(model), *common, "--no-overview",
                         "--out", str(root / "cohort")]) == 0
    return root / "cohort"


@pytest.mark.slow
def test_calibrated_cohort_worklist_columns_and_order(calibrated_cohort):
    rows = read_worklist(calibrated_cohort)
    scores = {r["case"]: load_json(calibrated_cohort / r["case"] / "scores.json")["classes"]["sphere"] for r in rows}
    for row in rows:  # the columns are scores.json's predicted Dice and its out-of-calibration list
        predicted = scores[row["case"]]["predicted_dice"]
        assert float(row["sphere:predicted_dice"]) == pytest.approx(predicted["value"], rel=1e-5)
        assert float(row["sphere:predicted_dice_low"]) == pytest.approx(predicted["interval"][0], rel=1e-5)
        assert float(row["sphere:predicted_dice_high"]) == pytest.approx(predicted["interval"][1], rel=1e-5)
        outside = predicted.get("outside_calibration")
        assert row["outside_calibration"] == (f"sphere ({', '.join(outside)})" if outside else "no")

    def group(case):
        s = scores[case]
        return 0 if s["empty_prediction"] else 1 if s["predicted_dice"].get("outside_calibration") else 2

    expected = sorted(scores, key=lambda c: (group(c), scores[c]["predicted_dice"]["interval"][0], c))
    assert [r["case"] for r in rows] == expected
    groups = [group(c) for c in expected]
    assert groups[0] == 0 and rows[0]["case"].startswith("faint") and {1, 2} <= set(groups)  # every group present
    page = (calibrated_cohort / "worklist.html").read_text(encoding="utf-8")
    assert "<th>sphere:predicted_dice_low</th>" in page and "<th>outside_calibration</th>" in page


@pytest.mark.slow
def test_the_calibrations_ranges_replace_the_cards_in_readings(calibrated_cohort):
    """scores.json reads each score against the calibration cases' range (on its uncertain side), records the
    bounds as ``usual_ranges`` from the calibration, and the worklist shows the same readings."""
    [doc] = [load_json(p) for p in (calibrated_cohort.parent / "home" / "calibrations").glob("*.json")]
    ranges = doc["classes"]["sphere"]["usual_ranges"]
    seen = set()
    for row in read_worklist(calibrated_cohort):
        scores = load_json(calibrated_cohort / row["case"] / "scores.json")
        usual = scores["usual_ranges"]
        assert usual["from"] == "calibration" and doc["id"] in usual["source"] == scores["reference_source"]
        assert usual["classes"]["sphere"]["dpw"] == {"review_below": ranges["dpw"][0]}
        assert usual["classes"]["sphere"]["cv"] == {"review_above": ranges["cv"][1]}
        for score, (lo, hi) in ranges.items():
            value = scores["classes"]["sphere"][score]
            beyond = value is not None and (value < lo if score == "dpw" else value > hi)
            expected = "not defined" if value is None else REVIEW if beyond else WITHIN
            assert scores["readings"]["sphere"][score]["reading"] == expected == row[f"sphere:{score}:reading"]
            seen.add(expected)
    assert {REVIEW, WITHIN} <= seen  # both readings occur


def test_calibration_reference_by_hand():
    doc = {"id": "c1", "n": 12, "method": "mc_dropout", "n_samples": 4,
           "classes": {"liver": {"usual_ranges": {"cv": [0.01, 0.05], "dpw": [0.8, 0.99]}}}}
    reference = calibration_reference(doc, frozenset({"dpw"}))
    assert reference["classes"] == {"liver": {"cv": {"review_above": 0.05}, "dpw": {"review_below": 0.8}}}
    assert reference["from"] == "calibration" and reference["n_samples"] == 4 and "c1" in reference["source"]
