"""Fitting a calibration from labelled case folders (plain volumes + scores.json), against the calibration
package's functions applied to the same arrays by hand."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib.calibration.risk_control import conformal_risk_threshold
from SegUncertaintyLib.core.errors import InputImageError, UsageError
from SegUncertaintyLib.evaluation.calibration_fit import fit_calibration, read_labelled_case, referral_workload

LABELS = {1: "label1"}  # plain folders: the empty case's segmentation names no class


def write(array, path, spacing=(2.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def make_cases(root, n, seed=0):
    """n cases: a ball reference, a prediction with flipped voxels near its surface (and case 0 empty),
    an entropy map higher at the errors; scores.json with cv rising as Dice falls."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:12, :14, :14]
    cases = []
    for i in range(n):
        folder, ref_dir = root / "cases" / f"c{i:02d}", root / "refs"
        folder.mkdir(parents=True)
        ref_dir.mkdir(exist_ok=True)
        r = np.sqrt((z - 6) ** 2 + (y - 7) ** 2 + (x - 7) ** 2)
        reference = (r < 4 + rng.uniform(-0.5, 0.5)).astype(np.uint8)
        near = np.abs(r - 4) < 1.5
        flip = near & (rng.random(r.shape) < rng.uniform(0.05, 0.6))
        prediction = np.where(flip, 1 - reference, reference).astype(np.uint8)
        if i == 0:
            prediction[:] = 0
        entropy = np.clip(0.3 * near + 0.4 * flip + rng.normal(0, 0.1, r.shape), 0, 1).astype(np.float32)
        write(prediction, folder / "segmentation.nrrd")
        write(entropy, folder / "entropy.nrrd")
        write(reference, ref_dir / f"c{i:02d}.nrrd")
        inter, total = (prediction & reference).sum(), prediction.sum() + reference.sum()
        d = 2 * inter / total
        empty = i == 0
        scores = {"cv": None if empty else float(0.5 * (1 - d) + rng.normal(0, 0.01)), "dpw": 1.0 if empty else
                  float(d), "ulabelled": None if empty else 0.1, "segment_entropy": None if empty else 0.1,
                  "diversity": 0.0 if empty else float(1 - d), "empty_prediction": empty}
        (folder / "scores.json").write_text(json.dumps({"classes": {"label1": scores}}))
        cases.append((folder, ref_dir / f"c{i:02d}.nrrd", prediction, reference, entropy))
    return cases


def test_fit_matches_the_package_on_the_same_arrays(tmp_path):
    made = make_cases(tmp_path, 12)
    cases = [read_labelled_case(folder, ref, labels=LABELS) for folder, ref, *_ in made]
    fitted = fit_calibration(cases, alpha=0.2, failure_dice=0.8)
    errors = [np.sort(e[p != r].astype(np.float64)) for _, _, p, r, e in made]
    expected = conformal_risk_threshold(errors, 0.2)
    referral = fitted["referral"]
    assert referral["threshold"] == expected.threshold and referral["n_calibration"] == 12
    assert "at most alpha" in referral["guarantee"] and "not per case" in referral["guarantee"]
    assert fitted["notes"] and "1/(n+1)" in fitted["notes"][0]  # fewer than 30 cases

    _, _, p, r, e = made[3]
    work = referral["per_case"]["c03"]
    flagged = e >= expected.threshold
    assert work["flagged_ml"] == pytest.approx(flagged.sum() * 2.0 / 1000)
    assert work["flagged_percent_of_segment"] == pytest.approx(100 * flagged.sum() / (p != 0).sum())
    corrected = np.where(flagged, r, p)
    assert work["dice_after_correction"]["label1"] == pytest.approx(
        2 * (corrected & r).sum() / (corrected.sum() + r.sum()))
    assert referral_workload(cases[3], -math.inf)["dice_after_correction"]["label1"] == 1.0

    block = fitted["classes"]["label1"]
    assert cases[0].empty["label1"] and block["predicted_dice"]["training"]["empty"][0] is True
    assert set(block["failure_detection"]) == {"cv", "dpw", "ulabelled", "segment_entropy", "diversity",
                                               "predicted_dice"}
    cv = block["failure_detection"]["cv"]
    assert cv["oracle_aurc"] <= cv["aurc"] and cv["n"] == 12
    json.dumps(fitted, allow_nan=True)  # JSON-ready


def test_refusals(tmp_path):
    made = make_cases(tmp_path, 10)
    cases = [read_labelled_case(folder, ref, labels=LABELS) for folder, ref, *_ in made]
    with pytest.raises(UsageError, match="at least 10"):
        fit_calibration(cases[:9])
    cases[2].classes = {1: "other"}
    with pytest.raises(UsageError, match="other classes"):
        fit_calibration(cases)
    with pytest.raises(InputImageError, match="no variance map"):
        read_labelled_case(made[0][0], made[0][1], map_name="variance", labels=LABELS)
    write(made[1][3], made[1][1], spacing=(1.0, 1.0, 1.0))  # the reference on another grid
    with pytest.raises(InputImageError, match="not on the grid"):
        read_labelled_case(made[1][0], made[1][1], labels=LABELS)
