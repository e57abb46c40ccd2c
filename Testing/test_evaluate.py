"""`segment` on synthetic phantoms with known boundary ambiguity, then `evaluate`: report vs per-case CSV."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import sphere_phantom

from SegUncertaintyLib import cli


@pytest.fixture
def evaluated(tmp_path, threshold_model):
    refs, preds = tmp_path / "refs", tmp_path / "preds" / "mc_dropout"
    refs.mkdir()
    for i, blur in enumerate((1.0, 2.5, 4.0, 6.0)):
        image = sphere_phantom(blur_mm=blur, radius_mm=20.0)
        sitk.WriteImage(image, str(tmp_path / f"case{i}.nrrd"))
        # the reference is the true sphere: the 0.5 level set of the noise-free phantom
        truth = sphere_phantom(blur_mm=blur, radius_mm=20.0) > 0.5
        sitk.WriteImage(sitk.Cast(truth, sitk.sitkUInt8), str(refs / f"case{i}.nrrd"))
        assert cli.main(["segment", str(tmp_path / f"case{i}.nrrd"), "--model", str(threshold_model),
                         "--samples", "6", "--out", str(preds / f"case{i}"), "--progress", "none",
                         "--no-overview"]) == 0
    ood = tmp_path / "ood.txt"
    ood.write_text("case3\n")
    out = tmp_path / "report"
    assert cli.main(["evaluate", str(preds), "--references", str(refs), "--out", str(out), "--ood", str(ood)]) == 0
    return out


def test_report_numbers_agree_with_the_per_case_csv(evaluated):
    rows = list(csv.DictReader((evaluated / "cases.csv").read_text().splitlines()))
    summary = json.loads((evaluated / "summary.json").read_text())["mc_dropout"]["classes"]["sphere"]
    assert len(rows) == 4 and summary["cases"] == 4
    dice = np.array([float(r["dice"]) for r in rows])
    assert summary["dice_mean"] == pytest.approx(dice.mean())
    assert summary["ece_mean_volume"] == pytest.approx(np.mean([float(r["ece_volume"]) for r in rows]))
    assert summary["bnf_fraction"] == pytest.approx(np.mean([r["bnf_benefits"] == "True" for r in rows]))
    assert 0.05 <= summary["ue_best_threshold"] <= 0.95 and 0 < summary["ue_dice_best"] <= 1
    assert (dice > 0.8).all()
    report = (evaluated / "report.md").read_text()
    assert f"{summary['dice_mean']:.3f}" in report and "Conventions" in report and "OOD AUROC" in report
    for figure in ("figures_sphere.png", "uncertainty_by_outcome_sphere.png", "scores_vs_dice_sphere.png"):
        assert (evaluated / figure).stat().st_size > 5000, figure
    # pooled TP/FP/FN/TN histograms add up the cases; per-case means are weighted back to the pooled mean
    hist = summary["entropy_by_confusion_box"]
    centres = (np.array(hist["edges"][1:]) + np.array(hist["edges"][:-1])) / 2
    tp = np.array(hist["TP"])
    assert tp.sum() > 0 and summary["per_case"]["dice"] == pytest.approx(dice.tolist())
    tp_means = np.array([float(r["entropy_mean_TP_box"]) for r in rows])
    assert np.all((tp_means >= 0) & (tp_means <= 1))
    assert (tp * centres).sum() / tp.sum() == pytest.approx(tp_means.mean(), abs=0.05)  # bin-centre estimate
    # referral to the reference can only raise the Dice, and ends above where it starts
    for curve in summary["referral_dice_mean"].values():
        assert curve[-1] >= curve[0] and np.all(np.diff(curve) >= -1e-9)


def test_blurrier_cases_are_less_certain_and_scores_track_quality(evaluated):
    rows = list(csv.DictReader((evaluated / "cases.csv").read_text().splitlines()))
    ulabelled = [float(r["ulabelled"]) for r in rows]  # blur 1, 2.5, 4, 6 mm
    assert np.all(np.diff(ulabelled) > 0)
    summary = json.loads((evaluated / "summary.json").read_text())["mc_dropout"]["classes"]["sphere"]
    assert summary["ood_auroc"]["ulabelled"] == 1.0  # the blurriest case is the most uncertain
