"""segment --tolerance: sampling in rounds recorded in scores.json and the manifest; bad values refused."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.phantoms import sphere_phantom


@pytest.fixture
def phantom_file(tmp_path):
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(noise=0.05), str(path))
    return path


def test_tolerance_samples_in_rounds_and_records_the_t_used(phantom_file, threshold_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["segment", str(phantom_file), "--model", str(threshold_model), "--samples", "60",
                     "--tolerance", "0.05", "--out", str(out), "--progress", "none", "--no-overview"]) == 0
    error = json.loads((out / "scores.json").read_text())["monte_carlo_error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert error["tolerance"] == 0.05 and error["rounds"][0]["n_samples"] == 10
    assert error["n_samples"] == error["rounds"][-1]["n_samples"] == manifest["n_samples"] <= 60
    assert error["rounds"][-1]["error"] <= 0.05 or error["n_samples"] == 60
    assert max(error["probability"], error["entropy"]) == pytest.approx(error["rounds"][-1]["error"])
    assert manifest["settings"]["tolerance"] == 0.05
    assert "Monte Carlo error" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [(["--tolerance", "0"], "--tolerance must be in"),
                                            (["--tolerance", "nan"], "--tolerance must be in"),
                                            (["--method", "ensemble", "--tolerance", "0.1"], "needs random samples")])
def test_bad_tolerance_is_refused_with_exit_2(phantom_file, threshold_model, tmp_path, capsys, extra, message):
    assert cli.main(["segment", str(phantom_file), "--model", str(threshold_model), "--out", str(tmp_path / "o"),
                     "--progress", "none", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
