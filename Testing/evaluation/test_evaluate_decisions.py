"""``evaluate`` on calibrated runs: failure detection per score (AURC, E-AURC, failure AUROC), the realised
missed-error fraction at each run's threshold, and the predicted-Dice intervals' coverage, against values
worked out by hand on four constructed cases (plain folders: segmentation, entropy map, scores.json)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.files import load_json

# per case: missed reference voxels (false negatives) with their entropy, cv, predicted Dice and interval
CASES = {
    "a": {"errors": [0.9, 0.1], "cv": 0.02, "predicted": 0.88, "interval": [0.80, 0.95]},          # misses 1 of 2
    "b": {"errors": [0.6, 0.7, 0.2, 0.8], "cv": 0.04, "predicted": 0.85, "interval": [0.80, 0.90]},  # 1 of 4
    "c": {"errors": [], "cv": 0.01, "predicted": 0.95, "interval": [0.90, 1.00]},                  # no error: 0
    "d": {"errors": [0.3], "cv": 0.03, "predicted": 0.93, "interval": [0.90, 1.00]},               # 1 of 1
}
THRESHOLD, ALPHA = 0.5, 0.1


def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(np.asarray(array)[None, None]), str(path))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("decisions")
    refs, runs = root / "refs", root / "runs"
    refs.mkdir()
    for case, spec in CASES.items():
        folder = runs / case
        folder.mkdir(parents=True)
        reference = np.array([1] * 10 + [0] * 10, dtype=np.uint8)
        prediction, entropy = reference.copy(), np.zeros(20, dtype=np.float32)
        for i, u in enumerate(spec["errors"]):
            prediction[i], entropy[i] = 0, u
        _write(refs / f"{case}.nrrd", reference)
        _write(folder / "segmentation.nrrd", prediction)
        _write(folder / "entropy.nrrd", entropy)
        scores = {s: spec["cv"] for s in ("cv", "ulabelled", "segment_entropy", "diversity")}
        (folder / "scores.json").write_text(json.dumps({
            "classes": {"organ": {**scores, "dpw": 1 - spec["cv"], "empty_prediction": False,
                                  "predicted_dice": {"value": spec["predicted"], "interval": spec["interval"],
                                                     "coverage": 0.9}}},
            "referral": {"map": "entropy", "threshold": THRESHOLD, "alpha": ALPHA}}))
    assert cli.main(["evaluate", str(runs), "--references", str(refs), "--labels", "1=organ",
                     "--out", str(root / "report")]) == 0
    return root / "report"


def _aurc(order, risk):
    """Hand AURC: the mean over k of the mean risk of the first k cases in ``order``."""
    return np.mean([np.mean([risk[c] for c in order[:k]]) for k in range(1, len(order) + 1)])


def test_failure_detection_equals_the_hand_values(report):
    block = load_json(report / "summary.json")["runs"]["classes"]["organ"]
    risk = {c: 1 - 2 * (10 - len(s["errors"])) / (20 - len(s["errors"])) for c, s in CASES.items()}  # 1 - Dice
    by_cv = ["c", "a", "d", "b"]       # ascending cv: least uncertain first
    oracle = ["c", "d", "a", "b"]      # ascending risk 0, 1/19, 1/9, 1/4
    cv = block["failure_detection"]["cv"]
    assert cv["aurc"] == pytest.approx(_aurc(by_cv, risk), abs=1e-6)
    assert cv["oracle_aurc"] == pytest.approx(_aurc(oracle, risk), abs=1e-6)
    assert cv["e_aurc"] == pytest.approx(_aurc(by_cv, risk) - _aurc(oracle, risk), abs=1e-6)
    assert cv["random_aurc"] == pytest.approx(np.mean(list(risk.values())), abs=1e-6)
    assert cv["failure_auroc"] == 1.0 and cv["failures"] == 1  # b (Dice 0.75 < 0.8) has the highest cv
    assert block["failure_detection"]["dpw"]["aurc"] == pytest.approx(cv["aurc"], abs=1e-6)  # 1 - cv: same order
    # the predicted Dice orders the cases as the oracle does (highest predicted accepted first)
    assert block["failure_detection"]["predicted_dice"]["e_aurc"] == pytest.approx(0.0, abs=1e-9)


def test_missed_error_fraction_and_interval_coverage(report):
    block = load_json(report / "summary.json")["runs"]["classes"]["organ"]
    # missed at 0.5: a 1/2 (0.1), b 1/4 (0.2), c 0 (no error), d 1/1 (0.3)
    assert block["missed_error_fraction"] == {"mean": pytest.approx((0.5 + 0.25 + 0 + 1) / 4), "n": 4,
                                              "alpha": ALPHA}
    # intervals: a holds 8/9, b misses 0.75, c holds 1, d holds 18/19
    assert block["predicted_dice_coverage"] == {"held": 3, "n": 4, "fraction": 0.75, "nominal": 0.9}
    with open(report / "cases.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert {c: float(r["missed_error_fraction"]) for c, r in rows.items()} == {"a": 0.5, "b": 0.25, "c": 0.0,
                                                                                 "d": 1.0}
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "### Failure detection and calibrated decisions" in text
    assert "mean over 4 case(s): 0.4375 (α = 0.1" in text and "3 of 4 (75%; nominal coverage 0.9)" in text


def test_uncalibrated_runs_have_failure_detection_but_no_decisions(tmp_path):
    refs, runs = tmp_path / "refs", tmp_path / "runs"
    refs.mkdir()
    for case, cv in (("p", 0.1), ("q", 0.2), ("r", 0.3)):
        (runs / case).mkdir(parents=True)
        reference = np.array([1] * 10 + [0] * 10, dtype=np.uint8)
        _write(refs / f"{case}.nrrd", reference)
        _write(runs / case / "segmentation.nrrd", reference)
        (runs / case / "scores.json").write_text(json.dumps({"classes": {"organ": {"cv": cv}}}))
    assert cli.main(["evaluate", str(runs), "--references", str(refs), "--labels", "1=organ",
                     "--out", str(tmp_path / "out")]) == 0
    block = load_json(tmp_path / "out" / "summary.json")["runs"]["classes"]["organ"]
    assert block["failure_detection"]["cv"]["aurc"] == 0.0  # every Dice is 1: no risk
    assert block["failure_detection"]["dpw"] is None and "predicted_dice" not in block["failure_detection"]
    assert "missed_error_fraction" not in block and "predicted_dice_coverage" not in block


@pytest.mark.parametrize(("scores", "message"), [
    ({"classes": {"organ": {"predicted_dice": {"value": "high"}}}}, "'organ'.'predicted_dice' must hold"),
    ({"classes": {"organ": {}}, "referral": {"map": "entropy", "threshold": "x", "alpha": 0.1}},
     "field 'referral' needs"),
    ({"classes": {"organ": {}}, "referral": [1, 2]}, "field 'referral' needs"),
])
def test_malformed_calibrated_scores_exit_3_in_one_line(tmp_path, capsys, scores, message):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "refs").mkdir()
    reference = np.array([1] * 10 + [0] * 10, dtype=np.uint8)
    _write(tmp_path / "refs" / "x.nrrd", reference)
    _write(tmp_path / "runs" / "x" / "segmentation.nrrd", reference)
    (tmp_path / "runs" / "x" / "scores.json").write_text(json.dumps(scores))
    code = cli.main(["evaluate", str(tmp_path / "runs"), "--references", str(tmp_path / "refs"), "--labels", "1=organ",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out" / "report.md").exists()
