"""`segment` on synthetic phantoms with known boundary ambiguity, then `evaluate`: report vs per-case CSV."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Four phantom cases with references and one OOD case without, segmented and evaluated once per module
    (tests only read it or write beside it)."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    threshold_model = write_threshold_model(tmp_path / "model")
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
    # an out-of-distribution case without a reference: a much blurrier, smaller sphere
    sitk.WriteImage(sphere_phantom(blur_mm=9.0, radius_mm=14.0), str(tmp_path / "ood0.nrrd"))
    assert cli.main(["segment", str(tmp_path / "ood0.nrrd"), "--model", str(threshold_model), "--samples", "6",
                     "--out", str(preds / "ood0"), "--progress", "none", "--no-overview"]) == 0
    ood = tmp_path / "ood.txt"
    ood.write_text("ood0\n")
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
    assert f"{summary['dice_mean']:.3f}" in report and "Conventions" in report and "Out-of-distribution" in report
    fractions = [summary[f"{k}_fraction"] for k in ("underconfident", "overconfident", "calibrated")]
    assert sum(fractions) == pytest.approx(1.0) and "well calibrated" in report
    signed = np.array([float(r["signed_calibration_error"]) for r in rows])
    tolerance = summary["calibration_split"]["tolerance"]
    assert summary["overconfident_fraction"] == pytest.approx(np.mean(signed < -tolerance))
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
    ood = summary["ood"]
    assert ood["cases"] == ["ood0"] and "ood0" not in [r["case"] for r in rows]
    scores = json.loads((evaluated.parent / "preds" / "mc_dropout" / "ood0" / "scores.json").read_text())
    assert ood["scores"]["ulabelled"] == [scores["classes"]["sphere"]["ulabelled"]]
    assert ood["auroc"]["ulabelled"]["auroc"] == 1.0  # the blurriest case is the most uncertain
    assert ood["auroc"]["ulabelled"]["n_ood"] == 1 and ood["auroc"]["ulabelled"]["n_in_distribution"] == 4


def test_plain_volumes_without_manifest_give_the_same_report(evaluated):
    """Another tool's volumes (segmentation, probability_<label>, maps; no manifest.json) evaluate to the
    same per-case numbers as the segment command's folders they were copied from. Without --ood, the
    case with no reference is skipped with a note instead of stopping the run."""
    import shutil

    root = evaluated.parent
    plain = root / "preds_plain" / "mc_dropout"
    for case in sorted((root / "preds" / "mc_dropout").iterdir()):
        shutil.copytree(case, plain / case.name, ignore=shutil.ignore_patterns("manifest.json", "*.png"))
    out = root / "report_plain"
    assert cli.main(["evaluate", str(plain), "--references", str(root / "refs"), "--out", str(out),
                     "--labels", "1=sphere"]) == 0
    original = list(csv.DictReader((evaluated / "cases.csv").read_text().splitlines()))
    again = list(csv.DictReader((out / "cases.csv").read_text().splitlines()))
    notes = json.loads((out / "summary.json").read_text())["mc_dropout"]["notes"]
    assert len(notes) == 1 and "ood0: skipped, no reference" in notes[0]
    assert "ood0: skipped, no reference" in (out / "report.md").read_text()
    assert [r["case"] for r in again] == [r["case"] for r in original]
    for a, b in zip(original, again, strict=True):
        for column in ("dice", "hd95_mm", "ece_volume", "nll_box", "ece_toplabel_box", "ulabelled",
                       "referral_auc_entropy"):
            assert float(a[column]) == pytest.approx(float(b[column])), column


def test_plain_volumes_need_a_segmentation_and_labels_must_parse(tmp_path):
    case = tmp_path / "preds" / "case0"
    case.mkdir(parents=True)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkFloat32), str(case / "entropy.nrrd"))
    refs = tmp_path / "refs"
    refs.mkdir()
    assert cli.main(["evaluate", str(tmp_path / "preds"), "--references", str(refs), "--out",
                     str(tmp_path / "out")]) != 0
    assert cli.main(["evaluate", str(tmp_path / "preds"), "--references", str(refs), "--out", str(tmp_path / "o"),
                     "--labels", "one=brain"]) == 2  # a usage error: one line, exit 2 (no SystemExit from main)


def test_several_annotators_give_ged_from_saved_samples(tmp_path, threshold_model):
    """REFS/<case>/ with three annotators (spheres of radius 20 +- delta mm): the report's GED and its
    terms equal cohort.generalized_energy_distance on the saved samples and the annotations, annotator
    disagreement grows with delta, and the majority vote is the reference for Dice."""
    from SegUncertaintyLib.evaluation.cohort_stats import generalized_energy_distance

    refs, preds = tmp_path / "refs", tmp_path / "preds" / "mc"
    deltas = (0.5, 2.0, 4.0)
    for i, delta in enumerate(deltas):
        image = sphere_phantom(blur_mm=2.0 + i, radius_mm=20.0)
        sitk.WriteImage(image, str(tmp_path / f"case{i}.nrrd"))
        (refs / f"case{i}").mkdir(parents=True)
        for j, radius in enumerate((20.0 - delta, 20.0, 20.0 + delta)):
            truth = sitk.Cast(sphere_phantom(blur_mm=2.0, radius_mm=radius) > 0.5, sitk.sitkUInt8)
            sitk.WriteImage(truth, str(refs / f"case{i}" / f"rater{j}.nrrd"))
        assert cli.main(["segment", str(tmp_path / f"case{i}.nrrd"), "--model", str(threshold_model),
                         "--samples", "6", "--out", str(preds / f"case{i}"), "--progress", "none", "--no-overview",
                         "--save-samples"]) == 0
    out = tmp_path / "report"
    assert cli.main(["evaluate", str(preds), "--references", str(refs), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "cases.csv").read_text().splitlines()))
    for i, row in enumerate(rows):
        with np.load(preds / f"case{i}" / "samples_sphere.npz") as data:
            bits, n = data["bits"], int(data["n_samples"])
        samples = [((bits[t // 8] >> (t % 8)) & 1).astype(bool) for t in range(n)]
        raters = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0 for p in sorted((refs / f"case{i}").iterdir())]
        expected = generalized_energy_distance(samples, raters)
        for key in ("ged2", "cross", "ged_sample_diversity", "annotator_disagreement"):
            assert float(row[key]) == pytest.approx(expected[key]), key
        assert row["annotators"] == "3"
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(preds / f"case{i}" / "segmentation.nrrd"))) > 0
        majority = np.mean(raters, axis=0) >= 0.5
        assert float(row["dice"]) == pytest.approx(2 * (seg & majority).sum() / (seg.sum() + majority.sum()))
        # the saved samples agree with the segmentation except near the boundary
        assert np.mean(np.mean(samples, axis=0) >= 0.5) == pytest.approx(np.mean(seg), abs=0.01)
    disagreement = [float(r["annotator_disagreement"]) for r in rows]
    assert np.all(np.diff(disagreement) > 0)
    summary = json.loads((out / "summary.json").read_text())["mc"]["classes"]["sphere"]
    assert summary["ged2_mean"] == pytest.approx(np.mean([float(r["ged2"]) for r in rows]))
    assert "Several annotators" in (out / "report.md").read_text()


def test_region_mask_restricts_calibration(evaluated):
    """--masks: calibration inside each case's mask equals BinStats on the masked voxels, computed directly."""
    from SegUncertaintyLib.evaluation.calibration import BinStats

    root = evaluated.parent
    masks = root / "masks"
    masks.mkdir()
    for case in sorted((root / "preds" / "mc_dropout").iterdir()):
        seg = sitk.ReadImage(str(case / "segmentation.nrrd"))
        mask = sitk.GetArrayFromImage(seg) * 0
        mask[: mask.shape[0] // 2] = 1  # the lower half of the slices
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(seg)
        sitk.WriteImage(image, str(masks / f"{case.name}.nrrd"))
    out = root / "report_masked"
    assert cli.main(["evaluate", str(root / "preds" / "mc_dropout"), "--references", str(root / "refs"),
                     "--out", str(out), "--masks", str(masks)]) == 0
    rows = list(csv.DictReader((out / "cases.csv").read_text().splitlines()))
    for row in rows:
        case = root / "preds" / "mc_dropout" / row["case"]
        prob = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "probability_sphere.nrrd")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "refs" / f"{row['case']}.nrrd"))) > 0
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(masks / f"{row['case']}.nrrd"))) > 0
        expected = BinStats.from_arrays(np.clip(prob, 0, 1), ref, mask).ece()
        assert float(row["ece_mask"]) == pytest.approx(expected)
        assert float(row["ece_mask"]) != pytest.approx(float(row["ece_volume"]))
    summary = json.loads((out / "summary.json").read_text())["mc_dropout"]["classes"]["sphere"]
    assert "ece_pooled_mask" in summary


def test_definitions_against_independent_recomputation(evaluated):
    """From the written volumes, recomputed here without evaluate: BnF at its own best threshold (Jungo and
    Reyes' condition per case, by hand), top-label ECE (Mehrtash et al. eq. 5 by hand), the threshold
    referral curve (correcting u > tau by hand), and the diversity equal to scores.json's."""
    from SegUncertaintyLib.evaluation.referral import REFERRAL_THRESHOLDS, THRESHOLDS

    rows = list(csv.DictReader((evaluated / "cases.csv").read_text().splitlines()))
    summary = json.loads((evaluated / "summary.json").read_text())["mc_dropout"]["classes"]["sphere"]
    root = evaluated.parent
    benefit = np.zeros((len(rows), len(THRESHOLDS)), bool)
    referred, referral_dice = [], []
    taus = np.array(REFERRAL_THRESHOLDS)[::20]
    for i, row in enumerate(rows):
        case = root / "preds" / "mc_dropout" / row["case"]
        read = lambda name: sitk.GetArrayFromImage(sitk.ReadImage(str(name)))  # noqa: E731
        pred = read(case / "segmentation.nrrd") > 0
        ref = read(root / "refs" / f"{row['case']}.nrrd") > 0
        u = read(case / "entropy.nrrd").astype(np.float64)
        p = np.clip(read(case / "probability_sphere.nrrd").astype(np.float64), 0, 1)
        tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
        for j, tau in enumerate(THRESHOLDS):
            tpu, fpu = (pred & ref & (u > tau)).sum(), (pred & ~ref & (u > tau)).sum()
            benefit[i, j] = fpu * tp > tpu * (tp + fp + fn)
        conf = np.maximum(p, 1 - p)
        correct = (p > 0.5) == ref  # two classes: the predicted label is foreground when p > 0.5
        ece = sum(np.mean(b) * abs(correct[b].mean() - conf[b].mean())
                  for m in range(1, 11) if (b := (conf > (m - 1) / 10) & (conf <= m / 10)).any())
        assert float(row["ece_toplabel_volume"]) == pytest.approx(ece, abs=1e-6)
        fixed = [np.where(u > t, ref, pred) for t in taus]
        referred.append([np.mean(u > t) for t in taus])
        referral_dice.append([2 * (f & ref).sum() / (f.sum() + ref.sum()) for f in fixed])
        scores = json.loads((case / "scores.json").read_text())["classes"]["sphere"]
        assert float(row["diversity"]) == scores["diversity"]
    fraction = benefit.mean(0)
    best = int(np.argmax(fraction))
    assert summary["bnf_fraction"] == pytest.approx(fraction.max())
    assert summary["bnf_best_threshold"] == pytest.approx(THRESHOLDS[best])
    assert summary["bnf_fraction_at_ue_threshold"] == pytest.approx(
        fraction[list(np.round(THRESHOLDS, 2)).index(summary["ue_best_threshold"])])
    assert [r["bnf_benefits"] == "True" for r in rows] == list(benefit[:, best])
    curve = summary["referral_threshold"]["entropy"]
    assert np.array(curve["mean_percent_referred"])[::20] == pytest.approx(100 * np.mean(referred, 0))
    assert np.array(curve["mean_dice"])[::20] == pytest.approx(np.mean(referral_dice, 0))


def test_report_lists_cases_worst_first_embeds_figures_and_explains_na(evaluated):
    report = (evaluated / "report.md").read_text()
    rows = list(csv.DictReader((evaluated / "cases.csv").read_text().splitlines()))
    worst_first = [r["case"] for r in sorted(rows, key=lambda r: float(r["dice"]))]
    table = report.split("### Cases, worst Dice first")[1].split("###")[0]
    positions = [table.index(f"| {case} |") for case in worst_first]
    assert positions == sorted(positions)
    for figure in ("figures_sphere.png", "uncertainty_by_outcome_sphere.png", "scores_vs_dice_sphere.png"):
        assert f"]({figure})" in report
    assert "Give me (un)certainty" in report and "2020" in report and ".txt" not in report
    # 4 in-distribution cases: no bootstrap interval, and the report says why
    assert "n/a (" in report and 'What "n/a" means' in report and "no bootstrap interval below 5 cases" in report


def test_missing_references_for_every_case_is_one_clear_error(tmp_path, evaluated):
    """Skipping stops at the point where nothing is left: then one error naming every skipped case."""
    empty = tmp_path / "no_refs"
    empty.mkdir()
    code = cli.main(["evaluate", str(evaluated.parent / "preds" / "mc_dropout"), "--references", str(empty),
                     "--out", str(tmp_path / "o")])
    assert code != 0 and not (tmp_path / "o" / "report.md").exists()


def test_curves_stay_distinct_beyond_ten_and_scatter_points_carry_case_names(evaluated, monkeypatch):
    """Matplotlib's 10-colour cycle repeats: beyond 10 curves the line style changes too. The score
    scatter names each point by its case (read back from the figure before it is closed)."""
    from SegUncertaintyLib.evaluation import report

    styles = [report._style(i, 40) for i in range(40)]
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 40
    assert {report._style(i, 10)["linestyle"] for i in range(10)} == {"-"}
    summaries = {"mc_dropout": json.loads((evaluated / "summary.json").read_text())["mc_dropout"]}
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    report._scores_figure(summaries, "sphere", evaluated.parent)
    texts = {t.get_text() for ax in figures[0].axes for t in ax.texts}
    assert texts == {"case0", "case1", "case2", "case3"}  # in-distribution cases only, no OOD point
