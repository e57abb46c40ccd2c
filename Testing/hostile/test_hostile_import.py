"""Issue 9 item 7: a malformed or hostile run folder never changes the scene. Each case breaks one thing in a
small valid run (test_mrml_run.synthetic_run) and asserts one clear ResultsError and a scene exactly as
before: the same node IDs in the same order, and the input volume and subject hierarchy unmodified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import slicer
from SegUncertaintyMRML import results  # noqa: E402

from Testing.slicer.mrml.test_mrml_run import synthetic_run


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _edit(folder: Path, change) -> None:
    manifest = _manifest(folder)
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _entry(manifest: dict, kind: str) -> dict:
    return next(e for e in manifest["outputs"] if e["kind"] == kind)


def _outside_file(folder: Path) -> Path:
    secret = folder.parent / "secret.nrrd"
    secret.write_bytes((folder / "entropy.nrrd").read_bytes())
    return secret


def _replace_by_link(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


CASES = {
    "manifest not JSON": (lambda f: (f / "manifest.json").write_text("{not json"), "Unreadable manifest"),
    "manifest a list": (lambda f: (f / "manifest.json").write_text("[1, 2]"), "Malformed manifest"),
    "outputs not a list": (lambda f: _edit(f, lambda m: m.update(outputs={"a": 1})), "Malformed manifest"),
    "entry without kind": (lambda f: _edit(f, lambda m: m["outputs"].append({"file": "x"})), "Malformed manifest"),
    "path with ..": (lambda f: (_outside_file(f), _edit(f, lambda m: _entry(m, "uncertainty").update(
        file="../secret.nrrd"))), "outside the run folder"),
    "absolute path": (lambda f: _edit(f, lambda m: _entry(m, "uncertainty").update(file=str(_outside_file(f)))),
                      "outside the run folder"),
    "symlink out of the folder": (lambda f: _replace_by_link(f / "entropy.nrrd", _outside_file(f)),
                                  "symbolic link"),
    "file name not a string": (lambda f: _edit(f, lambda m: _entry(m, "uncertainty").update(file=7)), "names no file"),
    "listed file missing": (lambda f: (f / "entropy.nrrd").unlink(), "not a file"),
    "map file not an image": (lambda f: (f / "entropy.nrrd").write_text("garbage"), "Could not read"),
    "labels not an object": (lambda f: _edit(f, lambda m: _entry(m, "labelmap").update(labels=["brain"])),
                             "labels"),
    "label value not an integer": (lambda f: _edit(f, lambda m: _entry(m, "labelmap").update(
        labels={"one": "brain"})), "not an integer"),
    "label name not a string": (lambda f: _edit(f, lambda m: _entry(m, "labelmap").update(labels={"1": 5})),
                                "needs a value 0-255 and a name"),
    "label value out of range": (lambda f: _edit(f, lambda m: _entry(m, "labelmap").update(
        labels={"300": "brain"})), "needs a value 0-255"),
    "terminology codes malformed": (lambda f: _edit(f, lambda m: _entry(m, "labelmap").update(
        terminology={"1": {"category": "tissue"}})), "Malformed terminology"),
    "terminology color out of range": (lambda f: _edit(f, lambda m: _entry(m, "labelmap").update(
        terminology={"1": {"color": [2, 0, 0]}})), "Malformed terminology"),
    "scores not JSON": (lambda f: (f / "scores.json").write_text("nan nan"), "Malformed scores"),
    "scores classes a list": (lambda f: (f / "scores.json").write_text('{"classes": [1]}'), "Malformed scores"),
    "scores per class not an object": (lambda f: (f / "scores.json").write_text('{"classes": {"brain": 3}}'),
                                       "Malformed scores"),
    "map entry without a name": (lambda f: _edit(f, lambda m: _entry(m, "uncertainty").pop("map")), "no 'map'"),
    "labelmap on another grid": (lambda f: (f / "segmentation.nrrd").write_bytes(
        (f.parent / "other.nrrd").read_bytes()), "not on the grid"),
}


def scene_state(scene, volume) -> tuple:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ids = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    return ids, volume.GetMTime(), volume.GetImageData().GetMTime(), hierarchy.GetNumberOfItems()


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_run_is_refused_and_the_scene_is_unchanged(mrml_scene, tmp_path, case):
    volume, _ = synthetic_run(tmp_path / "out", mrml_scene, {1: "brain"})
    if case == "labelmap on another grid":
        import numpy as np

        other = slicer.util.addVolumeFromArray(np.zeros((3, 3, 3), np.uint8), np.eye(4), "other")
        from SegUncertaintyMRML import volumes

        volumes.write_volume(other, tmp_path / "other.nrrd")
        volumes.remove_node(mrml_scene, other)
    corrupt, message = CASES[case]
    corrupt(tmp_path / "out")
    before = scene_state(mrml_scene, volume)
    with pytest.raises(results.ResultsError, match=message) as error:
        results.import_results(mrml_scene, tmp_path / "out", volume)
    assert "\n" not in str(error.value), "one line"
    assert scene_state(mrml_scene, volume) == before


def test_the_valid_run_imports(mrml_scene, tmp_path):
    """The corpus's base folder is valid, so each case fails for its own reason."""
    volume, _ = synthetic_run(tmp_path / "out", mrml_scene, {1: "brain"})
    assert results.import_results(mrml_scene, tmp_path / "out", volume).segmentation is not None
