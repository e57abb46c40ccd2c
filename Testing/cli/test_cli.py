"""The command line end to end: phantom with a threshold ensemble, the bundled sample, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.cli.common import CancelFlag
from SegUncertaintyLib.core.errors import OutputError
from SegUncertaintyLib.results import overview, run_folder
from Testing.support.files import load_json
from Testing.support.phantoms import sphere_phantom

EXPECTED_MAPS = ["entropy", "expected_entropy", "mutual_information", "variance"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegUncertaintyLib.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)


@pytest.fixture
def phantom_file(tmp_path) -> Path:
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(noise=0.05), str(path))
    return path


@pytest.mark.slow
def test_segment_phantom_writes_every_output_named_in_the_manifest(phantom_file, threshold_model, tmp_path):
    out = tmp_path / "out"
    proc = run("segment", str(phantom_file), "--model", str(threshold_model), "--method", "ensemble+mc_dropout",
               "--samples", "6", "--out", str(out), "--progress", "json", "--format", "nii.gz")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {"load", "preprocess", "inference", "postprocess", "write"} <= {e["stage"] for e in events}
    inference = [e["fraction"] for e in events if e["stage"] == "inference"]
    assert inference == sorted(inference) and inference[-1] == 1.0

    manifest = load_json(out / "manifest.json")
    assert manifest["n_samples"] == 12 and manifest["method"] == "ensemble+mc_dropout"
    assert sorted(p.name for p in out.iterdir()) == sorted([e["file"] for e in manifest["outputs"]]
                                                          + ["manifest.json"])
    maps = {e["map"] for e in manifest["outputs"] if e["kind"] == "uncertainty"}
    assert maps == set(EXPECTED_MAPS)
    image = sitk.ReadImage(str(phantom_file))
    for entry in manifest["outputs"]:
        if entry["file"].endswith(".nii.gz"):
            result = sitk.ReadImage(str(out / entry["file"]))
            assert result.GetSize() == image.GetSize()
            assert np.allclose(result.GetSpacing(), image.GetSpacing())
    # the maps decompose: predictive entropy (nats, normalized) = expected entropy + mutual information
    arrays = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{m}.nii.gz"))) for m in EXPECTED_MAPS}
    assert np.allclose(arrays["entropy"], arrays["expected_entropy"] + arrays["mutual_information"], atol=1e-4)
    assert (arrays["mutual_information"] >= -1e-6).all() and arrays["entropy"].max() <= 1 + 1e-6

    scores = load_json(out / "scores.json")["classes"]["sphere"]
    assert 0 < scores["cv"] < 0.2 and 0.5 < scores["dpw"] < 1
    low, high = scores["volume_ml_interval95"]
    assert low <= scores["volume_ml"] <= high
    assert "Wrote" in proc.stdout and "Wrote" not in proc.stderr  # the result on stdout, after the JSON lines
    assert next(line for line in proc.stdout.splitlines() if not line.startswith("{")).startswith("Wrote")


@pytest.mark.slow
def test_uncertainty_grows_with_boundary_ambiguity(tmp_path, threshold_model):
    """A blurrier edge (more ambiguous boundary) must give a less certain subject.

    The threshold model's dropout acts on the input (each voxel dropped with p = 0.2 independently), so
    its pairwise Dice (~0.8), volume CV and diversity do not depend on the edge width in expectation:
    they are compared with a tolerance only; the uncertainty inside the segment must grow."""
    results = {}
    for blur in (1.0, 6.0):
        path = tmp_path / f"blur{blur}.nrrd"
        sitk.WriteImage(sphere_phantom(blur_mm=blur), str(path))
        out = tmp_path / f"out{blur}"
        assert cli.main(["segment", str(path), "--model", str(threshold_model), "--samples", "8",
                         "--out", str(out), "--progress", "none", "--no-overview"]) == 0
        results[blur] = load_json(out / "scores.json")["classes"]["sphere"]
    assert results[6.0]["ulabelled"] > results[1.0]["ulabelled"] + 0.03
    assert results[6.0]["segment_entropy"] > results[1.0]["segment_entropy"] + 0.03
    assert results[6.0]["dpw"] == pytest.approx(results[1.0]["dpw"], abs=0.02)


@pytest.mark.slow
def test_same_seed_gives_identical_files(phantom_file, threshold_model, tmp_path):
    def once(name, seed):
        out = tmp_path / name
        cli.main(["segment", str(phantom_file), "--model", str(threshold_model), "--samples", "5", "--seed",
                  str(seed), "--out", str(out), "--progress", "none", "--no-overview"])
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "variance.nrrd")))

    a, b, c = once("a", 1), once("b", 1), once("c", 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("args, code, message", [
    (["segment", "{missing}"], 3, "not found"),
    (["segment", "{phantom}", "--model", "no-such-model"], 4, "not found"),
    (["segment", "{phantom}", "--out", "{blocked}"], 5, "Cannot write"),
    (["segment", "{phantom}", "--method", "ensemble", "--model", "{one_member}"], 4, "ensemble"),
    (["segment", "{phantom}", "--overlap", "1.5"], 2, "overlap"),
])
@pytest.mark.slow
def test_errors_exit_nonzero_with_one_clear_message(args, code, message, tmp_path, phantom_file,
                                                    threshold_model):
    from Testing.support.tiny_models import write_threshold_model

    blocker = tmp_path / "file"
    blocker.write_text("x")
    values = {"missing": tmp_path / "missing.nii.gz", "phantom": phantom_file, "blocked": blocker / "out",
              "one_member": write_threshold_model(tmp_path / "one", members=1)}
    argv = [a.format(**values) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(threshold_model)]
    proc = run(*argv, "--progress", "none")
    assert proc.returncode == code
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("seguncertainty: error:") and message in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_failed_write_keeps_the_previous_run_and_leaves_no_partial_file(phantom_file, threshold_model,
                                                                         tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["segment", str(phantom_file), "--model", str(threshold_model), "--samples", "3", "--out", str(out),
            "--progress", "none"]
    assert cli.main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_overview(*_args, **_kw):
        raise OutputError("disk full (simulated)")

    monkeypatch.setattr(overview, "draw_overview", broken_overview)  # looked up when the run draws
    assert cli.main([*argv, "--seed", "7"]) == 5
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder, nothing changed


def test_cancel_writes_nothing(phantom_file, threshold_model, tmp_path, monkeypatch):
    monkeypatch.setattr(CancelFlag, "__call__", lambda self: True)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(["segment", str(phantom_file), "--model", str(threshold_model), "--out", str(out),
                     "--progress", "none"])
    assert code == 130
    assert not out.exists()  # the folder is only created by publishing a complete run
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging folder, no lock file


@pytest.mark.slow
def test_sample_with_bundled_model(tmp_path):
    """The README's first command on the bundled sample: a plausible brain mask, consistent scores."""
    out = tmp_path / "sample"
    proc = run("segment", "--sample", "--samples", "4", "--out", str(out), "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    manifest = load_json(out / "manifest.json")
    assert manifest["model"]["name"] == "brainmask-t1" and manifest["n_samples"] == 4  # MC dropout on the first member
    seg = sitk.ReadImage(str(out / "segmentation.nrrd"))
    sample = sitk.ReadImage(str(cli.segment.SAMPLE_IMAGE))
    assert seg.GetSize() == sample.GetSize() and np.allclose(seg.GetOrigin(), sample.GetOrigin())
    brain = load_json(out / "scores.json")["classes"]["brain"]
    assert 1000 < brain["volume_ml"] < 2000  # adult brain, with or without CSF
    assert brain["dpw"] > 0.95 and brain["cv"] < 0.02  # in distribution: samples agree
    assert (out / "overview.png").stat().st_size > 10_000


def test_models_lists_and_verifies_the_bundled_model():
    proc = run("models", "--verify")
    assert proc.returncode == 0 and "brainmask-t1" in proc.stdout and "sha256 ok" in proc.stdout



def test_device_cuda_without_a_gpu_is_refused_before_the_model_loads(tmp_path, capsys):
    """--device cuda on a machine without a GPU: exit 2 and one line, nothing written (it used to run on the
    CPU with a note); --device auto falls back to the CPU."""
    import torch

    from SegUncertaintyLib.inference.sliding_window import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["segment", "--sample", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == ("seguncertainty: error: --device cuda: no CUDA GPU is available "
                                               "(use --device auto or cpu)")
    assert list(tmp_path.iterdir()) == []
    assert pick_device("auto").type == "cpu"


def test_a_mount_point_is_refused_as_output_folder_before_anything_is_written():
    """A mount point cannot be swapped by a rename: refused at once (it used to fail after the inference)."""
    if not os.path.ismount("/dev/shm"):
        pytest.skip("no /dev/shm mount point here")
    with pytest.raises(OutputError, match="mount point"), run_folder.output_folder("/dev/shm"):
        pass
