"""Output file names are safe whatever the class names are; the class's name stays in the manifest's ``label``
and the readers (evaluate, the Slicer glue) go through the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import SimpleITK as sitk

from SegUncertaintyLib import cli
from SegUncertaintyLib.core.files import safe_stems
from SegUncertaintyLib.evaluation.case_folder import plain_manifest
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

PORTABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def test_safe_stems_by_hand():
    names = ["left kidney", "a/b", "../up", "Liver", "liver", "-x", "", "ok.name_1"]
    assert safe_stems(names) == {"left kidney": "left_kidney", "a/b": "a_b", "../up": "_._up", "Liver": "Liver",
                                 "liver": "liver_2", "-x": "_x", "": "class", "ok.name_1": "ok.name_1"}


def test_class_names_with_spaces_and_slashes_give_safe_file_names(tmp_path):
    model = write_threshold_model(tmp_path / "model")
    card = json.loads((model / "card.json").read_text())
    card["labels"] = {"0": "background", "1": "left kidney/cortex"}
    (model / "card.json").write_text(json.dumps(card))
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sphere_phantom(size=(20, 18, 16), radius_mm=18.0), str(image))
    out = tmp_path / "out"
    assert cli.main(["segment", str(image), "--model", str(model), "--samples", "2", "--out", str(out),
                     "--progress", "none", "--no-overview", "--save-samples"]) == 0
    written = {p.name for p in out.iterdir()}
    assert all(PORTABLE.fullmatch(name) for name in written), written
    assert {"probability_left_kidney_cortex.nrrd", "samples_left_kidney_cortex.npz"} <= written
    entries = {e["file"]: e for e in json.loads((out / "manifest.json").read_text())["outputs"]}
    assert entries["probability_left_kidney_cortex.nrrd"]["label"] == "left kidney/cortex"
    assert entries["samples_left_kidney_cortex.npz"]["label"] == "left kidney/cortex"


def test_evaluate_finds_a_plain_folders_probability_by_the_safe_name(tmp_path):
    image = sphere_phantom(size=(8, 8, 8), radius_mm=6.0)
    segmentation = sitk.Cast(image > 0.5, sitk.sitkUInt8)
    sitk.WriteImage(segmentation, str(tmp_path / "segmentation.nrrd"))
    sitk.WriteImage(image, str(tmp_path / "probability_left_kidney.nrrd"))
    manifest = plain_manifest(Path(tmp_path), {1: "left kidney"})
    entry = {"file": "probability_left_kidney.nrrd", "kind": "probability", "label": "left kidney"}
    assert entry in manifest["outputs"]
