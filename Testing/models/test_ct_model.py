"""The bundled abdomen-ct-demo model: its organs' label values, names and SNOMED terminology reach the command
line's outputs, the manifest and a Slicer segmentation (a small synthetic CT-like volume, not the real data);
the training data step (Testing/scripts/ct_data.py) maps TotalSegmentator's ids and fails with one message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from SegUncertaintyModule import process
from SegUncertaintyMRML import results, volumes

from SegUncertaintyLib.models.loader import load_model

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "Testing" / "scripts"
sys.path.insert(0, str(SCRIPTS))
import ct_data  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "abdomen-ct-demo"
ORGANS = {"1": "liver", "2": "spleen", "3": "right kidney", "4": "left kidney", "5": "stomach"}
# label -> (SNOMED type code, laterality modifier code or None): Slicer's general anatomy list
CODES = {"1": ("10200004", None), "2": ("78961009", None), "3": ("64033007", "24028007"),
         "4": ("64033007", "7771000"), "5": ("69695003", None)}
# no index can be reached and nothing is cached: pip fails at once (no retries, 1 s timeout)
OFFLINE_PIP = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
               "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0", "PIP_TIMEOUT": "1", "PIP_NO_CACHE_DIR": "1"}


def synthetic_abdomen(path: Path) -> Path:
    """A 3 mm CT-like slab (HU): air around a soft-tissue body with a liver-like block on the patient's right,
    a spleen-like one on the left, two kidney-like blobs and a bony spine; LPS grid, 64 x 56 x 12 voxels."""
    z, y, x = np.mgrid[0:12, 0:56, 0:64].astype(np.float32)
    hu = np.full(x.shape, -1000.0, np.float32)
    body = ((x - 32) / 30) ** 2 + ((y - 28) / 24) ** 2 < 1
    hu[body] = -90.0
    hu[body & (((x - 18) / 12) ** 2 + ((y - 24) / 14) ** 2 < 1)] = 60.0  # patient's right (LPS: small x)
    hu[body & (((x - 50) / 6) ** 2 + ((y - 32) / 7) ** 2 < 1)] = 45.0
    for cx in (22, 42):
        hu[((x - cx) / 4) ** 2 + ((y - 42) / 5) ** 2 < 1] = 30.0
    hu[((x - 32) / 4) ** 2 + ((y - 46) / 4) ** 2 < 1] = 400.0
    image = sitk.GetImageFromArray(hu + np.random.default_rng(0).normal(0, 10, hu.shape).astype(np.float32))
    image.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    """The command line run once on the synthetic CT with the bundled CT model (ensemble: 3 members)."""
    folder = tmp_path_factory.mktemp("ct_run")
    image = synthetic_abdomen(folder / "abdomen.nii.gz")
    args = process.segment_command(sys.executable, str(image), str(folder / "out"), model=MODEL, method="ensemble")
    done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:]
    return image, folder / "out"


def test_card_labels_terminology_and_declared_flip():
    """The card names the five organs 1-5, codes each in SNOMED CT (kidneys: Kidney + Right/Left), windows HU
    and declares only the anterior-posterior flip it was trained with."""
    card = load_model(MODEL).card
    assert {str(k): v for k, v in card.labels.items()} == {"0": "background", **ORGANS}
    terminology = card.info["terminology"]
    for value, (type_code, modifier) in CODES.items():
        assert terminology[value]["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert terminology[value]["type"][:2] == ["SCT", type_code]
        assert (terminology[value].get("modifier") or [None, None])[1] == modifier
        assert len(terminology[value]["color"]) == 3
    assert card.intensity["method"] == "window" and card.intensity["lower"] < 0 < card.intensity["upper"]
    assert card.tta_flips == ("AP",)
    assert card.flip_axes == (1,)  # the y axis of the (z, y, x) RAS grid, the axis train_ct_abdomen flips


def test_dropout_acts_on_features_not_on_the_input():
    """MC dropout in feature space: the network's first layer is a convolution of the input and every dropout
    comes after it (MONAI UNet's ``dropout`` sits in each conv block's ADN, after the convolution)."""
    from SegUncertaintyLib.models.loader import build_network

    card = load_model(MODEL).card
    layers = [type(m).__name__ for m in build_network(card.architecture).modules()
              if type(m).__name__ in ("Conv3d", "ConvTranspose3d", "Dropout", "Dropout3d")]
    assert card.architecture["kwargs"]["dropout"] > 0
    assert layers[0] == "Conv3d" and layers[1] == "Dropout" and layers.count("Dropout") >= 4


def test_organs_reach_outputs_and_manifest(ct_run):
    """segmentation.nrrd holds only the card's values; the manifest carries names and terminology; scores.json
    has a row per organ."""
    _, out = ct_run
    manifest = json.loads((out / "manifest.json").read_text())
    seg = next(e for e in manifest["outputs"] if e["kind"] == "labelmap")
    assert seg["labels"] == {"0": "background", **ORGANS}
    assert seg["terminology"] == load_model(MODEL).card.info["terminology"]
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / seg["file"]))))
    assert set(values.tolist()) <= {0, 1, 2, 3, 4, 5} and len(values) > 1
    probabilities = {e["label"] for e in manifest["outputs"] if e["kind"] == "probability"}
    assert set(ORGANS.values()) <= probabilities
    scores = json.loads((out / "scores.json").read_text())
    assert set(ORGANS.values()) <= set(scores["classes"])


def test_organs_reach_a_slicer_segmentation(mrml_scene, ct_run):
    """Imported through the MRML glue: one segment per organ with its name, label value, SNOMED terminology
    entry and colour; each segment's voxels are the labelmap's voxels of its value."""
    image, out = ct_run
    volume = volumes.read_volume(mrml_scene, image, "abdomen")
    run = results.import_results(mrml_scene, out, volume)
    segmentation = run.segmentation.GetSegmentation()
    labelmap = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    terminology = load_model(MODEL).card.info["terminology"]
    assert segmentation.GetNumberOfSegments() == len(ORGANS)
    for value, name in ORGANS.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetLabelValue() == int(value)
        tag = vtk_tag(segment, segment.GetTerminologyEntryTagName())
        type_code, modifier = CODES[value]
        assert "~SCT^123037004^Anatomical Structure~" in tag
        assert f"~SCT^{type_code}^{terminology[value]['type'][2]}~" in tag
        assert (f"~SCT^{modifier}^" in tag) == bool(modifier)
        assert np.allclose(segment.GetColor(), terminology[value]["color"], atol=1e-6)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(run.segmentation, segment_id, volume)
        assert np.array_equal(mask > 0, labelmap == int(value)), name


def vtk_tag(segment, name: str) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(name, value)
    return str(value)


def test_totalsegmentator_ids_map_to_our_organs():
    """TotalSegmentator's "total" ids (5 liver, 1 spleen, 2 right kidney, 3 left kidney, 6 stomach) become the
    card's values; every other id (e.g. 4 gallbladder, 7 pancreas, 117) becomes background."""
    source = np.array([[[5, 1, 2, 3, 6, 4, 7, 117, 0]]], np.uint8)
    image = sitk.GetImageFromArray(source)
    image.SetSpacing((2.0, 2.0, 3.0))
    organs = ct_data.to_organs(image)
    assert sitk.GetArrayFromImage(organs).tolist() == [[[1, 2, 3, 4, 5, 0, 0, 0, 0]]]
    assert organs.GetSpacing() == (2.0, 2.0, 3.0)
    assert {str(v): row[0] for v, row in ct_data.ORGANS.items()} == ORGANS


@pytest.mark.parametrize("script", ["ct_data.py", "train_ct_abdomen.py"])
def test_data_step_fails_with_one_message_when_the_archive_cannot_be_fetched(tmp_path, script):
    """No reachable index: exit code 2 (ct_data) or 1 (train, via SystemExit), one 'error:' line naming the
    package and pip's reason, no traceback, nothing extracted and no model written."""
    args = [sys.executable, str(SCRIPTS / script), "--cache", str(tmp_path / "cache")]
    if script == "train_ct_abdomen.py":
        args += ["--out", str(tmp_path / "model")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, **OFFLINE_PIP})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: Could not fetch the totalsegmentator 2.18.0 source archive")
    assert "No matching distribution" in lines[0]
    assert not (tmp_path / "cache" / "totalsegmentator").exists() and not (tmp_path / "model").exists()


def test_data_step_refuses_an_archive_with_the_wrong_checksum(tmp_path):
    """A cached archive whose sha256 differs is refused, with the path and both digests; nothing extracted."""
    archive = tmp_path / "archives" / ct_data.ARCHIVE
    archive.parent.mkdir()
    archive.write_bytes(b"not the archive")
    with pytest.raises(ct_data.DataError, match="expected " + ct_data.ARCHIVE_SHA256):
        ct_data.prepare(tmp_path)
    assert not (tmp_path / "totalsegmentator").exists()


def test_proposed_bounds_follow_each_scores_own_range():
    """evaluate_ct_model's usual-range rule: a bound is kept only when the score can cross it. ulabelled is in
    nats up to ln 6 = 1.79 for six classes (a 1.2 bound can fire), segment_entropy up to ln 2 = 0.693 (a 0.75
    bound cannot), diversity up to 1, cv unbounded; dpw's lower bound must stay above 0."""
    import evaluate_ct_model

    worst = {"liver": {"ulabelled": 0.8, "segment_entropy": 0.5, "diversity": 0.7, "cv": 2.0, "dpw": 0.5},
             "spleen": {"ulabelled": 1.3, "segment_entropy": 0.4, "diversity": 0.6, "dpw": 0.2}}
    bounds = evaluate_ct_model.propose_bounds(worst, n_classes=6)
    assert bounds["liver"] == {"ulabelled": {"review_above": 1.2}, "cv": {"review_above": 3.0},
                               "dpw": {"review_below": 0.25}}
    assert bounds["spleen"] == {"segment_entropy": {"review_above": 0.6}, "diversity": {"review_above": 0.9}}
    # with two classes ulabelled's range ends at ln 2: the same 1.2 bound could never fire
    assert "ulabelled" not in evaluate_ct_model.propose_bounds(worst, n_classes=2)["liver"]
