"""The overview drawn by a child process: the same PNG as drawn here, its errors raised here, no child left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from SegUncertaintyLib.core.errors import CancelledError
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models.loader import load_model
from SegUncertaintyLib.results.overview_process import DrawHere, OverviewProcess
from SegUncertaintyLib.results.overview_slices import overview_request
from Testing.support.phantoms import sphere_phantom

CHILD = "SegUncertaintyLib.results.overview_process"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    from Testing.support.tiny_models import write_threshold_model

    model = load_model(write_threshold_model(tmp_path_factory.mktemp("model") / "threshold"))
    return segment_image(sphere_phantom(), model, SegmentOptions(method="ensemble")), model.description


def request(outputs, path: Path):
    result, description = outputs
    return overview_request(result, path, "phantom — threshold — ensemble", description.labels,
                            {"1": {"color": [1.0, 0.0, 1.0]}})


def draw(drawer, req, check_cancel=lambda: None) -> None:
    drawer.start(req)
    drawer.finish(check_cancel)
    drawer.close()


def children() -> set[int]:
    """Pids of live overview processes (none of this suite's other tests runs one at the same time)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and CHILD.encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def test_the_child_draws_the_same_png_as_this_process(outputs, tmp_path):
    draw(DrawHere(), request(outputs, tmp_path / "here.png"))
    with OverviewProcess() as drawer:
        assert drawer.process is not None
        child = drawer.process.pid
        draw(drawer, request(outputs, tmp_path / "child.png"))
    assert (tmp_path / "child.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    assert (tmp_path / "here.png").stat().st_size > 10_000
    assert child not in children()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.png", "here.png"]  # no temporary left


def test_an_error_in_the_child_is_raised_here_as_drawing_here_raises_it(outputs, tmp_path):
    missing = tmp_path / "no_such_folder" / "overview.png"
    with pytest.raises(FileNotFoundError) as here:
        draw(DrawHere(), request(outputs, missing))
    with OverviewProcess() as drawer, pytest.raises(FileNotFoundError) as there:
        draw(drawer, request(outputs, missing))
    assert str(there.value) == str(here.value)


def test_a_child_that_died_leaves_the_drawing_to_this_process(outputs, tmp_path):
    with OverviewProcess() as drawer:
        drawer.process.kill()
        drawer.process.wait()
        draw(drawer, request(outputs, tmp_path / "overview.png"))
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_a_child_that_cannot_start_leaves_the_drawing_to_this_process(outputs, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no_python"))
    with OverviewProcess() as drawer:
        assert drawer.process is None
        draw(drawer, request(outputs, tmp_path / "overview.png"))
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_a_cancel_while_the_child_draws_ends_the_child(outputs, tmp_path):
    def cancelled():
        raise CancelledError()

    with OverviewProcess() as drawer:
        child = drawer.process.pid
        drawer.start(request(outputs, tmp_path / "overview.png"))
        with pytest.raises(CancelledError):
            drawer.finish(cancelled)
        drawer.close()
        assert drawer.process is None
    assert child not in children()


@pytest.mark.slow
def test_the_command_draws_through_a_child_and_leaves_none_after_a_run_or_a_refused_input(tmp_path, threshold_model,
                                                                                           monkeypatch):
    """The command line's overview (drawn by its child) equals the library's (drawn in process, as cli.main
    called in process draws), and a run refused at the read, after the child started, ends its child too."""
    from SegUncertaintyLib import cli

    image = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(noise=0.05), str(image))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    before = children()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # the same rounding as here

    def segment(path: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "SegUncertaintyLib.cli", "segment", str(path), "--model",
                               str(threshold_model), "--out", str(out), "--progress", "none", "--seed", "3"],
                              capture_output=True, text=True, env=env, timeout=300)

    ran = segment(image, tmp_path / "child")
    assert ran.returncode == 0, ran.stderr
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the command then leaves torch's thread count alone
    torch.set_num_threads(1)
    try:
        assert cli.main(["segment", str(image), "--model", str(threshold_model), "--out", str(tmp_path / "here"),
                         "--progress", "none", "--seed", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "child" / "overview.png").read_bytes() == (tmp_path / "here" / "overview.png").read_bytes()
    refused = segment(broken, tmp_path / "refused")
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert children() - before == set()
