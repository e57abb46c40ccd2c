"""Publishing a run folder: atomic swap, stale files, lock, leftovers of killed runs, default names."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.cli.segment import default_out
from SegUncertaintyLib.core.errors import InputImageError, OutputError, UsageError
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.io import publish
from SegUncertaintyLib.io.publish import PREFIX, OutputFolder, folder_tag
from SegUncertaintyLib.models.loader import load_model
from SegUncertaintyLib.results.run_folder import output_folder, run_files
from Testing.support.files import load_json
from Testing.support.phantoms import sphere_phantom


def fake_run(folder: Path, files: dict[str, bytes]) -> Path:
    """A folder as an earlier run leaves it: its files and a manifest listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps(
        {"tool": "seguncertainty 0.1", "outputs": [{"file": n} for n in files]}))
    return folder


def publish_run(out: Path, files: dict[str, bytes]) -> None:
    with output_folder(out) as folder, folder.staged() as stage:
        fake_run(stage, files)


def test_new_run_replaces_an_earlier_one_and_its_stale_files(tmp_path):
    out = tmp_path / "out"
    publish_run(out, {"segmentation.nrrd": b"old", "samples_brain.npz": b"old samples"})
    publish_run(out, {"segmentation.nrrd": b"new"})
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "segmentation.nrrd"]  # no stale samples
    assert (out / "segmentation.nrrd").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, old or lock folder left


def test_rerun_without_save_samples_removes_the_earlier_samples(tmp_path, threshold_model):
    image = tmp_path / "phantom.nrrd"
    sitk.WriteImage(sphere_phantom(), str(image))
    out = tmp_path / "out"
    argv = ["segment", str(image), "--model", str(threshold_model), "--samples", "3", "--out", str(out),
            "--progress", "none", "--no-overview"]
    assert cli.main([*argv, "--save-samples"]) == 0
    assert (out / "samples_sphere.npz").exists()
    assert cli.main(argv) == 0
    listed = {e["file"] for e in load_json(out / "manifest.json")["outputs"]} | {"manifest.json"}
    assert {p.name for p in out.iterdir()} == listed and "samples_sphere.npz" not in listed


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_failed_swap_keeps_the_earlier_run(tmp_path, monkeypatch, exchange):
    out = tmp_path / "out"
    publish_run(out, {"segmentation.nrrd": b"old"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(f"{PREFIX}stage-"):
            raise OSError(28, "No space left on device (simulated)")
        return real_rename(src, dst)

    def failing_exchange(a, b):
        raise OSError(5, "Input/output error (simulated)")

    monkeypatch.setattr(publish.os, "rename", failing_rename)
    monkeypatch.setattr(publish, "_exchange", failing_exchange if exchange else lambda a, b: False)
    with pytest.raises(OutputError, match="previous content was kept"):
        publish_run(out, {"segmentation.nrrd": b"new"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_two_rename_swap_publishes_when_renameat2_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    publish_run(out, {"a.nrrd": b"1"})
    publish_run(out, {"b.nrrd": b"2"})
    assert sorted(p.name for p in out.iterdir()) == ["b.nrrd", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_run_killed_between_the_two_renames_is_put_back(tmp_path):
    out = fake_run(tmp_path / "out", {"segmentation.nrrd": b"old"})
    os.rename(out, tmp_path / f"{PREFIX}old-{folder_tag('out')}-4242-deadbeef")  # what the kill left
    with output_folder(out):
        assert (out / "segmentation.nrrd").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_folders_of_killed_runs_are_removed_and_nothing_else(tmp_path):
    tag = folder_tag("out")
    stale = [tmp_path / f"{PREFIX}stage-{tag}-4242-0badf00d", tmp_path / f"{PREFIX}stage-{tag}-7-1234abcd",
             tmp_path / f"{PREFIX}scratch-{tag}-4242-0badf00d"]
    for folder in stale:
        fake_run(folder, {"segmentation.nrrd": b"half"})
    kept = [tmp_path / f"{PREFIX}stage-{folder_tag('other')}-4242-0badf00d",  # another output folder's
            tmp_path / f"{PREFIX}stage-out",  # not our name pattern
            tmp_path / "out-stage"]
    for folder in kept:
        folder.mkdir()
    with output_folder(tmp_path / "out"):
        pass
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)


def test_scratch_folder_lies_beside_the_output_and_is_removed_however_the_block_ends(tmp_path):
    out = tmp_path / "out"
    with output_folder(out) as folder:
        with folder.scratch() as scratch:
            assert scratch.parent == tmp_path and scratch.name.startswith(f"{PREFIX}scratch-{folder_tag('out')}-")
            (scratch / "sums.raw").write_bytes(b"x" * 100)
        assert not scratch.exists()
        with pytest.raises(KeyboardInterrupt), folder.scratch() as scratch:
            raise KeyboardInterrupt
        assert not scratch.exists()
    with pytest.raises(RuntimeError, match="outside"), folder.scratch():
        pass
    assert list(tmp_path.iterdir()) == []


def test_lock_refuses_a_second_run_and_is_released_after(tmp_path):
    out = tmp_path / "out"
    with output_folder(out):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"), output_folder(out):
            pass
        with output_folder(tmp_path / "other"):  # another folder is independent
            pass
    with output_folder(out):  # released
        pass
    assert list(tmp_path.iterdir()) == []


def test_folder_changed_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with output_folder(out) as folder, pytest.raises(OutputError, match="notes.txt"), folder.staged() as stage:
        fake_run(stage, {"segmentation.nrrd": b"new"})
        out.mkdir()
        (out / "notes.txt").write_text("written by the user meanwhile")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_run_files_reads_only_plain_names_of_a_seguncertainty_manifest(tmp_path):
    assert run_files(fake_run(tmp_path / "a", {"x.nrrd": b""})) == {"x.nrrd", "manifest.json"}
    for manifest in ({"tool": "seguncertainty 1", "outputs": [{"file": "../x"}]},
                     {"tool": "other 1", "outputs": [{"file": "x"}]},
                     {"tool": "seguncertainty 1", "outputs": [{"file": ["x"]}]},
                     {"tool": "seguncertainty 1", "outputs": "x"}, [1, 2]):
        (tmp_path / "b").mkdir(exist_ok=True)
        (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
        assert run_files(tmp_path / "b") is None
    (tmp_path / "b" / "manifest.json").write_bytes(b"\xff{not json")
    assert run_files(tmp_path / "b") is None


def test_symlinked_output_folder_is_published_at_its_target(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with OutputFolder(link, run_files) as folder, folder.staged() as stage:
        fake_run(stage, {"a.nrrd": b"1"})
    assert link.is_symlink() and (link / "a.nrrd").read_bytes() == b"1"


def test_default_output_names_never_collide(tmp_path):
    a, b = tmp_path / "a" / "t1.nii.gz", tmp_path / "b" / "t1.nii.gz"
    assert default_out(a) != default_out(b)
    assert default_out(a) == default_out(a) and default_out(a).name.startswith("t1-")


def test_segment_image_validates_its_input_as_the_command_line(threshold_model):
    model = load_model(threshold_model)
    array = sitk.GetArrayFromImage(sphere_phantom())
    array[5, 6, 7] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    with pytest.raises(InputImageError, match="1 NaN"):
        segment_image(nan_image, model, SegmentOptions(method="softmax"))
    with pytest.raises(InputImageError, match="SimpleITK image"):
        segment_image(array, model, SegmentOptions(method="softmax"))
    for kwargs, text in (({"max_batch": 0}, "max-batch"), ({"samples": 0}, "samples"),
                         ({"overlap": 0.97}, "stride"), ({"overlap": 1.0}, "overlap")):
        with pytest.raises(UsageError, match=text):
            segment_image(sphere_phantom(), model, SegmentOptions(method="mc_dropout", **kwargs))
