"""MONAI bundles: our adapter against monai.bundle's own run of the same bundle (its evaluator, its
transforms, Invertd, SaveImaged of the softmax), MC dropout, and bad bundles (exit 4, one line)."""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import run

from SegUncertaintyLib.cli import main
from SegUncertaintyLib.core.errors import UsageError
from SegUncertaintyLib.core.methods import SampleSpec
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models.adapters.monai_bundle import MonaiBundleModel
from SegUncertaintyLib.models.registry import MONAI_BUNDLE, detect_format
from Testing.support.monai_bundle_tiny import INFERENCE, METADATA, make_bundle
from Testing.support.nnunet_tiny import ct_like_image


def test_softmax_pass_equals_monai_bundle_own_run(tmp_path):
    bundle = make_bundle(tmp_path)
    assert detect_format(bundle) == MONAI_BUNDLE
    image = ct_like_image((20, 28, 30), (1.2, 0.9, 1.7))  # rotated direction: Orientationd and Invertd work
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    run(run_id="run", config_file=str(bundle / "configs/inference.json"),
        meta_file=str(bundle / "configs/metadata.json"), bundle_root=str(bundle),
        input_image=str(tmp_path / "ct.nii.gz"), logging_file=None)
    saved = np.squeeze(np.asarray(nib.load(bundle / "eval" / "ct_prob.nii.gz").dataobj))  # (x, y, z, C)
    expected = np.moveaxis(saved, -1, 0).transpose(0, 3, 2, 1)  # (C, z, y, x)
    model = MonaiBundleModel(bundle)
    assert model.description.labels == {0: "background", 1: "liver", 2: "spleen"}
    ours = model.run_pass(model.prepare(image, torch.device("cpu")), SampleSpec(0))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4


def test_mc_dropout_samples_differ_and_repeat_with_the_seed(tmp_path):
    model = MonaiBundleModel(make_bundle(tmp_path))
    image = ct_like_image((12, 14, 16))
    a = segment_image(image, model, SegmentOptions(method="mc_dropout", samples=3, seed=2))
    b = segment_image(image, model, SegmentOptions(method="mc_dropout", samples=3, seed=2))
    variance = sitk.GetArrayFromImage(a.maps["variance"])
    assert variance.max() > 1e-4 and np.array_equal(variance, sitk.GetArrayFromImage(b.maps["variance"]))
    assert a.segmentation.GetDirection() == image.GetDirection()


def test_cli_segment_with_a_bundle(tmp_path):
    bundle = make_bundle(tmp_path)
    sitk.WriteImage(ct_like_image((12, 14, 16)), str(tmp_path / "ct.nii.gz"))
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(bundle), "--method", "mc_dropout",
               "--samples", "2", "--out", str(tmp_path / "out"), "--progress", "none", "--no-overview"])
    assert rc == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "Tiny test bundle" and manifest["n_samples"] == 2


def _two_channels(inference, metadata):
    metadata["network_data_format"]["inputs"]["image"]["num_channels"] = 2


def _weights_mismatch(inference, metadata):
    inference["network_def"]["channels"] = [8, 16, 32]


def _no_dropout_for_mc(inference, metadata):
    inference["network_def"]["dropout"] = 0.0


@pytest.mark.parametrize("breaker, words", [
    (_two_channels, "needs 2 input channels"),
    (_weights_mismatch, "does not fit network_def"),
    (_no_dropout_for_mc, "MC dropout is impossible"),
])
def test_bad_bundles_exit_4_with_one_line(tmp_path, capsys, breaker, words):
    inference, metadata = copy.deepcopy(INFERENCE), copy.deepcopy(METADATA)
    bundle = make_bundle(tmp_path, inference, metadata)
    breaker(inference, metadata)
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    sitk.WriteImage(ct_like_image((8, 8, 8)), str(tmp_path / "ct.nii.gz"))
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(bundle), "--method", "mc_dropout",
               "--out", str(tmp_path / "out"), "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 4 and len(err.splitlines()) == 1 and words in err, err


def test_models_add_list_use_by_name_and_remove_a_bundle(tmp_path, monkeypatch, capsys):
    from SegUncertaintyLib.core.files import sha256_file

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    bundle = make_bundle(tmp_path)
    (bundle / "eval").mkdir()
    (bundle / "eval" / "old_prediction.nii.gz").write_bytes(b"not part of the model")
    assert main(["models", "add", str(bundle), "--name", "tiny-bundle"]) == 0
    installed = tmp_path / "home" / "models" / "tiny-bundle"
    expected = {"configs/inference.json", "configs/metadata.json", "models/model.pt"}
    assert {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()} == expected
    recorded = json.loads((installed.parent / "installed.json").read_text())["models"]["tiny-bundle"]
    assert recorded["format"] == "monai_bundle"
    assert recorded["files"] == {rel: sha256_file(bundle / rel) for rel in expected}
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["tiny-bundle"]
    assert row["format"] == "monai_bundle" and row["status"] == "ok" and row["members"] == 1
    assert row["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert row["methods"] == ["softmax", "mc_dropout"]

    sitk.WriteImage(ct_like_image((12, 14, 16)), str(tmp_path / "ct.nii.gz"))
    maps = []
    for model in ("tiny-bundle", str(bundle)):
        out = tmp_path / f"out-{len(maps)}"
        assert main(["segment", str(tmp_path / "ct.nii.gz"), "--model", model, "--method", "softmax",
                     "--out", str(out), "--progress", "none", "--no-overview", "--format", "nii.gz"]) == 0
        maps.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "probability_spleen.nii.gz"))))
    assert json.loads((tmp_path / "out-0" / "manifest.json").read_text())["model"]["name"] == "tiny-bundle"
    assert np.array_equal(maps[0], maps[1])  # by name = by path

    (installed / "models" / "model.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-bundle  BROKEN (monai_bundle): Installed model tiny-bundle: models/model.pt is missing or " \
           "changed since 'models add' (size differs)" in out
    assert "brainmask-t1" in out
    assert main(["models", "remove", "tiny-bundle"]) == 0
    assert not installed.exists()


def test_a_bundle_refuses_a_non_torch_backend(tmp_path):
    """Only card models choose a backend: a bundle with --backend openvino is refused (UsageError, exit 2)."""
    model = MonaiBundleModel(make_bundle(tmp_path))
    with pytest.raises(UsageError, match="only card models choose a backend"):
        segment_image(ct_like_image((12, 14, 16)), model, SegmentOptions(backend="openvino"))
