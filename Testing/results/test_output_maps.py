"""segment --maps / --map-dtype: the files written, the manifest, float16 precision, and that the Slicer
import (real slicer-core scene) and evaluate read such runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "SegUncertaintyLib" / "sample" / "colin27_t1_2mm.nii.gz"


def segment(*argv: str) -> None:
    """One run in its own process, on one thread: the maps of two runs are compared bit for bit, and torch's
    reductions round differently with another thread count (which follows the machine's load)."""
    args = [sys.executable, "-m", "SegUncertaintyLib.cli", "segment", *argv, "--progress", "none", "--no-overview"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The bundled sample, ensemble: all maps in float32, and two maps without probabilities in float16."""
    root = tmp_path_factory.mktemp("maps")
    segment(str(SAMPLE), "--method", "ensemble", "--out", str(root / "full"))
    segment(str(SAMPLE), "--method", "ensemble", "--out", str(root / "small"),
            "--maps", "entropy,mutual_information", "--map-dtype", "float16")
    return root / "full", root / "small"


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_manifest_lists_exactly_the_files_written_with_their_dtype(runs):
    full, small = runs
    for folder in runs:
        listed = {e["file"] for e in manifest(folder)["outputs"]} | {"manifest.json"}
        assert listed == {p.name for p in folder.iterdir()}
    assert {e["file"] for e in manifest(small)["outputs"]} == {
        "segmentation.nrrd", "entropy.nrrd", "mutual_information.nrrd", "scores.json"}
    assert {e.get("map") for e in manifest(full)["outputs"]} >= {
        "entropy", "expected_entropy", "mutual_information", "variance"}
    assert "probability_brain.nrrd" in {e["file"] for e in manifest(full)["outputs"]}
    for e in manifest(small)["outputs"]:
        if e["kind"] == "uncertainty":
            assert e["dtype"] == "32-bit float" and e["precision"] == "float16"
    assert manifest(small)["settings"]["maps"] == ["entropy", "mutual_information"]
    assert all("precision" not in e for e in manifest(full)["outputs"])


def test_float16_maps_are_the_float32_maps_rounded_to_float16(runs):
    full, small = runs
    for name in ("entropy", "mutual_information"):
        exact = sitk.GetArrayFromImage(sitk.ReadImage(str(full / f"{name}.nrrd")))
        compact = sitk.GetArrayFromImage(sitk.ReadImage(str(small / f"{name}.nrrd")))
        assert compact.dtype == np.float32
        assert np.array_equal(compact, exact.astype(np.float16).astype(np.float32)), name
        assert np.abs(compact - exact).max() <= 2.0**-12  # half a float16 step on [0.5, 1]
        assert not np.array_equal(compact, exact)  # it really rounded
    assert (small / "entropy.nrrd").stat().st_size < (full / "entropy.nrrd").stat().st_size


@pytest.mark.parametrize("bad", ["entropy,nonsense", "", "entropy,entropy"])
def test_maps_option_rejects_unknown_empty_or_repeated_names(bad, capsys):
    assert cli.main(["segment", "--sample", "--maps", bad]) == 2
    assert "--maps expects distinct names" in capsys.readouterr().err


def test_slicer_imports_a_run_with_fewer_float16_maps(mrml_scene, runs):
    import slicer
    from SegUncertaintyMRML import results, volumes

    _, small = runs
    volume = volumes.read_volume(mrml_scene, SAMPLE, "colin")
    run = results.import_results(mrml_scene, small, volume)
    assert set(run.maps) == {"entropy", "mutual_information"} and run.probabilities == {}
    for name, node in run.maps.items():
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(small / f"{name}.nrrd")))
        assert np.array_equal(slicer.util.arrayFromVolume(node), expected)


def test_evaluate_reports_a_missing_map_as_na_with_the_reason(tmp_path):
    model = write_threshold_model(tmp_path / "model")
    refs, preds = tmp_path / "refs", tmp_path / "preds" / "tta"
    refs.mkdir()
    for i, blur in enumerate((1.0, 4.0)):
        sitk.WriteImage(sphere_phantom(blur_mm=blur, radius_mm=20.0), str(tmp_path / f"case{i}.nrrd"))
        truth = sphere_phantom(blur_mm=blur, radius_mm=20.0) > 0.5
        sitk.WriteImage(sitk.Cast(truth, sitk.sitkUInt8), str(refs / f"case{i}.nrrd"))
        assert cli.main(["segment", str(tmp_path / f"case{i}.nrrd"), "--model", str(model), "--samples", "6",
                         "--out", str(preds / f"case{i}"), "--progress", "none", "--no-overview",
                         "--maps", "mutual_information,probability"]) == 0
    out = tmp_path / "report"
    assert cli.main(["evaluate", str(preds), "--references", str(refs), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "tta/case0: no entropy map (left out by segment --maps)" in report
    header, _, row = [line.split(" | ") for line in report.split("## sphere")[1].strip().splitlines()[:3]]
    for column in ("U-E Dice", "U-E tau", "BnF", "BnF tau"):  # n/a with its numbered reason, never zeros
        assert row[header.index(column)].startswith("n/a ("), column
    assert row[header.index("ECE % (fg)")].endswith("%")  # the probability maps still give calibration
    summary = json.loads((out / "summary.json").read_text())["tta"]["classes"]["sphere"]
    assert "entropy_by_confusion_box" not in summary
