"""``calibrate`` on a tiny nnU-Net model whose splits_final.json names some calibration cases as training
cases: a warning naming them (and a note in the calibration), or exit 2 with one line under ``--strict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.calibration.store import list_calibrations
from SegUncertaintyLib.evaluation.calibrate import nnunet_training_cases
from Testing.support.nnunet_tiny import ct_like_image, make_nnunet_model

pytestmark = [pytest.mark.nnunet, pytest.mark.slow]

TRAINED = ["case_01", "case_04", "case_07"]  # fold 0 trains on case_01 and case_04, fold 1 on case_07


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_calibrate")
    folder, _ = make_nnunet_model(root / "results")
    splits = [{"train": ["case_01", "case_04", "other_1"], "val": ["case_07"]},
              {"train": ["case_07", "other_2"], "val": ["case_01", "case_04"]}]
    (folder.parent / "splits_final.json").write_text(json.dumps(splits))  # where nnU-Net's dataset folder has it
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(10):
        image = ct_like_image(seed=i)
        array = sitk.GetArrayFromImage(image)
        reference = sitk.GetImageFromArray(np.where(array > 300, 2, np.where(array > -400, 1, 0)).astype(np.uint8))
        reference.CopyInformation(image)
        sitk.WriteImage(image, str(images / f"case_{i:02d}_0000.nii.gz"))
        sitk.WriteImage(reference, str(labels / f"case_{i:02d}.nii.gz"))
    return root, folder, images, labels


def _calibrate(labelled, *extra):
    root, folder, images, labels = labelled
    return cli.main(["calibrate", str(folder), "--images", str(images), "--labels", str(labels), "--method",
                     "ensemble", "--alpha", "0.2", "--progress", "none", "--out", str(root / "report"), *extra])


def test_training_cases_are_the_train_lists_of_the_models_folds(labelled):
    _, folder, _, _ = labelled
    cases, splits = nnunet_training_cases(folder)
    assert cases == {"case_01", "case_04", "other_1", "case_07", "other_2"} and splits.name == "splits_final.json"


def test_strict_refuses_in_one_line_and_writes_no_calibration(labelled, monkeypatch, capsys):
    root = labelled[0]
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(root / "home_strict"))
    assert _calibrate(labelled, "--strict") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 calibration case(s) are training cases" in err[0]
    assert all(name in err[0] for name in TRAINED)
    assert not (root / "home_strict" / "calibrations").exists()


def test_without_strict_a_warning_names_them_and_the_calibration_notes_it(labelled, monkeypatch, caplog):
    root = labelled[0]
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(root / "home"))
    assert _calibrate(labelled) == 0
    err = caplog.text
    assert "training cases of the nnU-Net model" in err and all(name in err for name in TRAINED)
    [(_, doc)] = list_calibrations()
    assert any("case_01, case_04, case_07" in note for note in doc["notes"])
    assert "case_01, case_04, case_07" in (root / "report" / "report.md").read_text()
