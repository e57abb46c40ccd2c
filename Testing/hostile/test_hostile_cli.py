"""Hostile and broken command lines: options, output folders, cancel and signals.

Every case asserts the exit code, exactly one line ``seguncertainty: error: ...`` on stderr naming the
problem, no traceback, and that nothing was written or changed anywhere under the test folder (input
files, output folders, hidden staging or lock files included).
"""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.results import run_folder
from SegUncertaintyLib.results.run_folder import output_folder
from Testing.support.phantoms import sphere_phantom


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) -> content hash ('dir' for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("seguncertainty: error: ") and "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def world(tmp_path, threshold_model):
    """An input image in a user's folder, the user's other files, an earlier run, a foreign manifest."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = inputs / "phantom.nrrd"
    sitk.WriteImage(sphere_phantom(), str(image))
    (inputs / "notes.txt").write_text("my notes")
    user = tmp_path / "user_folder"
    user.mkdir()
    (user / "thesis.docx").write_bytes(b"precious")
    earlier = tmp_path / "earlier_run_plus_user_file"
    earlier.mkdir()
    (earlier / "segmentation.nrrd").write_bytes(b"earlier output")
    (earlier / "manifest.json").write_text(json.dumps(
        {"tool": "seguncertainty 0.1", "outputs": [{"file": "segmentation.nrrd"}]}))
    (earlier / "my_edit.seg.nrrd").write_bytes(b"user's correction")
    foreign = tmp_path / "foreign_manifest"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"tool": "other-tool", "outputs": [{"file": "data.bin"}]}))
    (foreign / "data.bin").write_bytes(b"other tool's data")
    escaping = tmp_path / "escaping_manifest"
    escaping.mkdir()
    (escaping / "manifest.json").write_text(json.dumps(
        {"tool": "seguncertainty 0.1", "outputs": [{"file": "../in/phantom.nrrd"}, {"file": "own.txt"}]}))
    (escaping / "own.txt").write_text("not listed by a plain name")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {"img": str(image), "in_dir": str(inputs), "user": str(user), "earlier": str(earlier),
            "foreign": str(foreign), "escaping": str(escaping), "blocked": str(blocker / "out"),
            "model": str(threshold_model), "locked": str(tmp_path / "locked_out"), "root": tmp_path}


SEGMENT = ["segment", "{img}", "--model", "{model}", "--progress", "none"]
CASES = [  # (id, argv, exit code, text in the message)
    ("samples-0", [*SEGMENT, "--samples", "0"], 2, "--samples"),
    ("samples-negative", [*SEGMENT, "--samples", "-3"], 2, "--samples"),
    ("samples-1-mc-dropout", [*SEGMENT, "--samples", "1"], 2, "at least 2"),
    ("samples-1-tta", [*SEGMENT, "--method", "tta", "--samples", "1"], 2, "2 to 8"),
    ("samples-9-tta", [*SEGMENT, "--method", "tta", "--samples", "9"], 2, "2 to 8"),
    ("samples-not-a-number", [*SEGMENT, "--samples", "many"], 2, "invalid int"),
    ("samples-0-ensemble", [*SEGMENT, "--method", "ensemble", "--samples", "0"], 2, "--samples"),
    ("max-batch-0", [*SEGMENT, "--max-batch", "0"], 2, "--max-batch"),
    ("max-batch-negative", [*SEGMENT, "--max-batch", "-4"], 2, "--max-batch"),
    ("backend-precision-mismatch", [*SEGMENT, "--backend", "onnxruntime", "--precision", "bf16"], 2, "runs fp32"),
    ("backend-on-cuda", [*SEGMENT, "--backend", "openvino", "--device", "cuda"], 2, "runs on the CPU"),
    ("fp16-on-cpu", [*SEGMENT, "--precision", "fp16", "--device", "cpu"], 2, "CUDA only"),
    ("backend-unknown", [*SEGMENT, "--backend", "tensorrt"], 2, "invalid choice"),
    ("overlap-1-voxel-stride", [*SEGMENT, "--overlap", "0.95"], 2, "stride"),
    ("overlap-1", [*SEGMENT, "--overlap", "1"], 2, "--overlap"),
    ("overlap-negative", [*SEGMENT, "--overlap", "-0.5"], 2, "--overlap"),
    ("overlap-nan", [*SEGMENT, "--overlap", "nan"], 2, "--overlap"),
    ("seed-not-an-int", [*SEGMENT, "--seed", "1.5"], 2, "invalid int"),
    ("unknown-option", [*SEGMENT, "--bogus"], 2, "unrecognized"),
    ("unknown-method", [*SEGMENT, "--method", "voodoo"], 2, "invalid choice"),
    ("unknown-format", [*SEGMENT, "--format", "png"], 2, "invalid choice"),
    ("unknown-progress", ["segment", "{img}", "--progress", "loud"], 2, "invalid choice"),
    ("no-input", ["segment", "--model", "{model}"], 2, "INPUT"),
    ("input-and-sample", [*SEGMENT, "--sample"], 2, "INPUT"),
    ("no-command", [], 2, "command"),
    ("evaluate-without-references", ["evaluate", "{in_dir}", "--out", "{user}/r"], 2, "--references"),
    ("out-is-the-input-folder", [*SEGMENT, "--out", "{in_dir}"], 5, "did not write"),
    ("out-is-the-input-file", [*SEGMENT, "--out", "{img}"], 5, "existing file"),
    ("out-holds-user-files", [*SEGMENT, "--out", "{user}"], 5, "thesis.docx"),
    ("out-earlier-run-plus-user-file", [*SEGMENT, "--out", "{earlier}"], 5, "my_edit.seg.nrrd"),
    ("out-other-tools-manifest", [*SEGMENT, "--out", "{foreign}"], 5, "did not write"),
    ("out-manifest-naming-paths-outside", [*SEGMENT, "--out", "{escaping}"], 5, "did not write"),
    ("out-under-a-file", [*SEGMENT, "--out", "{blocked}"], 5, "Cannot write"),
    ("out-locked-by-another-run", [*SEGMENT, "--out", "{locked}"], 5, "Another seguncertainty run"),
]


@pytest.mark.parametrize("argv, code, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_command_line(argv, code, text, world, capsys):
    argv = [a.format(**world) for a in argv]
    root = world["root"]
    with output_folder(world["locked"]) if world["locked"] in argv else contextlib.nullcontext():
        before = snapshot(root)
        assert cli.main(argv) == code
        after = snapshot(root)
    assert text in error_line(capsys.readouterr().err)
    assert after == before


def test_unexpected_exception_is_one_line_and_exit_1(world, capsys, monkeypatch):
    def broken(*_a, **_k):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr("SegUncertaintyLib.io.images.read_image", broken)  # cli imports it when segment runs
    before = snapshot(world["root"])
    assert cli.main(["segment", world["img"], "--model", world["model"], "--progress", "none",
                     "--out", str(world["root"] / "new_out")]) == 1
    line = error_line(capsys.readouterr().err)
    assert "ZeroDivisionError" in line and "simulated bug" in line
    assert snapshot(world["root"]) == before


@pytest.mark.slow
def test_usage_error_in_a_real_process_is_one_line_exit_2(world):
    proc = subprocess.run([sys.executable, "-m", "SegUncertaintyLib.cli", "segment", world["img"], "--samples", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--samples" in error_line(proc.stderr)


def test_sigterm_while_writing_publishes_nothing_and_keeps_the_earlier_run(world, capsys, monkeypatch):
    out = world["root"] / "run"
    argv = ["segment", world["img"], "--model", world["model"], "--samples", "3", "--progress", "none",
            "--out", str(out), "--no-overview"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    before = snapshot(world["root"])
    real_write, written = run_folder.write_image, []

    def write_then_terminate(image, path, *a):
        real_write(image, path, *a)
        written.append(path)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(run_folder, "write_image", write_then_terminate)
    assert cli.main([*argv, "--seed", "9"]) == 130
    assert "Cancelled" in error_line(capsys.readouterr().err)
    # stopped at the next file of each of the parallel writers; the run has 6 images (segmentation, one
    # probability, 4 maps), so a cancel that was ignored would write them all
    assert 2 <= len(written) <= 2 + run_folder.IMAGE_WRITERS < 6
    assert snapshot(world["root"]) == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the run


@pytest.mark.slow
def test_sigterm_inside_a_long_window_exits_130_within_seconds(world, tmp_path):
    """15000 MC-dropout samples of a TorchScript model (within the memory check: their (T, T) pair matrices
    take 7 GB): one window takes about 6 s on an idle 2-core machine. SIGTERM one second after
    preprocessing must stop the sample loop inside that first window, well within the 12 s allowed."""
    out = tmp_path / "long_run"
    before = snapshot(world["root"])
    proc = subprocess.Popen([sys.executable, "-m", "SegUncertaintyLib.cli", "segment", world["img"], "--model",
                             world["model"], "--samples", "15000", "--max-batch", "64", "--progress", "json",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["stage"] == "preprocess" and events[-1]["fraction"] == 1.0:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    rest, stderr = proc.communicate(timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 130, stderr
    assert elapsed < 12.0
    assert not any(json.loads(line)["stage"] == "inference" for line in rest.splitlines())  # inside window 1
    assert "Cancelled" in error_line(stderr)
    assert snapshot(world["root"]) == before
