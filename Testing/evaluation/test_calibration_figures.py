"""The ``calibrate`` report's figures: valid PNGs linked from report.md, drawn from what the fit computed."""

from __future__ import annotations

import re

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.calibration.failure import aurc, risk_coverage
from SegUncertaintyLib.calibration.risk_control import error_values, missed_error_fraction
from SegUncertaintyLib.calibration.store import threshold_from_json
from SegUncertaintyLib.evaluation.calibration_figures import REFERRAL_PNG, referral_figure, risk_coverage_figure
from Testing.cli.test_calibrate import labelled_set
from Testing.support.files import load_json
from Testing.support.tiny_models import write_threshold_model

PNG = b"\x89PNG\r\n\x1a\n"


def test_risk_coverage_by_hand():
    coverage, selective = risk_coverage(np.array([0.3, 0.1, 0.2]), np.array([1.0, 0.5, 0.0]))
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert selective.tolist() == pytest.approx([0.5, 0.25, 0.5])  # risks taken 0.5, 0, 1
    # tied uncertainty: every order counts equally, i.e. the tie group's mean risk
    assert risk_coverage(np.array([1.0, 1.0]), np.array([0.0, 1.0]))[1].tolist() == pytest.approx([0.5, 0.5])
    assert aurc(np.array([0.3, 0.1, 0.2]), np.array([1.0, 0.5, 0.0])) == pytest.approx(1.25 / 3)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    model = write_threshold_model(root / "model")
    images, labels = labelled_set(root / "data", 12, seed=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGUNCERTAINTY_HOME", str(root / "home"))
        assert cli.main(["calibrate", str(model), "--images", str(images), "--labels", str(labels), "--method",
                         "mc_dropout", "--samples", "4", "--alpha", "0.2", "--progress", "none",
                         "--out", str(root / "report")]) == 0
    return root / "report"


@pytest.mark.slow
def test_report_links_valid_pngs(report):
    text = (report / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert {REFERRAL_PNG, "risk_coverage_sphere.png", "predicted_dice_sphere.png"} <= set(linked)
    for name in linked:
        data = (report / name).read_bytes()
        assert data.startswith(PNG)
        image = matplotlib.image.imread(report / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not a blank canvas


@pytest.mark.slow
def test_referral_curve_drawn_is_the_mean_missed_error_fraction_of_the_cases(report, tmp_path):
    """The plotted points equal the mean over the calibration cases of L_i(λ), recomputed here from the case
    folders' maps and the references; the bound reaches α only at or beyond λ̂."""
    doc = load_json(report / "calibration.json")
    errors = []
    for case in doc["cases"]:
        folder = report / "cases" / case["case"]
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentation.nrrd")))
        ent = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "entropy.nrrd")))
        errors.append(error_values(ent, seg, sitk.GetArrayFromImage(sitk.ReadImage(case["reference"]))))
    drawn = referral_figure(doc, tmp_path / "r.png")
    assert len(drawn["threshold"]) > 20
    expected = [np.mean([missed_error_fraction(e, t) for e in errors]) for t in drawn["threshold"]]
    assert drawn["mean_missed_error_fraction"] == pytest.approx(expected, abs=1e-12)
    n, alpha, threshold = doc["n"], doc["alpha"], threshold_from_json(doc["referral"]["threshold"])
    bound = n / (n + 1) * np.array(expected) + 1 / (n + 1)
    assert np.all(bound[np.array(drawn["threshold"]) <= threshold] <= alpha + 1e-12)


@pytest.mark.slow
def test_risk_coverage_curves_drawn_give_the_reported_aurc(report, tmp_path):
    doc = load_json(report / "calibration.json")
    block = doc["classes"]["sphere"]
    curves = risk_coverage_figure(block, "sphere", tmp_path / "rc.png")
    assert set(curves) == {*block["failure_detection"]}
    for score, selective in curves.items():
        assert np.mean(selective) == pytest.approx(block["failure_detection"][score]["aurc"], abs=1e-12)
