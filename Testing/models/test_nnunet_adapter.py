"""nnU-Net v2 trained-model folders: parity with nnunetv2's own predictor, methods, bad folders.

The oracle is nnunetv2's nnUNetPredictor (see nnunet_tiny.py), run per fold on the same input.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegUncertaintyLib.cli import main
from SegUncertaintyLib.core.errors import ModelError
from SegUncertaintyLib.core.methods import SampleSpec
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models.adapters.nnunet import NnUNetModel
from SegUncertaintyLib.models.loader import load_model
from SegUncertaintyLib.models.registry import NNUNET, detect_format
from Testing.support.nnunet_tiny import (
    ct_like_image,
    make_nnunet_model,
    nnunet_reference,
    tiny_dataset_json,
    tiny_plans,
)

pytestmark = [pytest.mark.nnunet, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, weights = make_nnunet_model(tmp_path_factory.mktemp("nnunet"))
    return folder, weights, NnUNetModel(folder)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def run_one(model, image, spec):
    return model.run_pass(model.prepare(image, torch.device("cpu")), spec)


def test_folder_is_recognized_with_folds_as_members_and_labels_from_dataset_json(tiny):
    folder, _, model = tiny
    assert detect_format(folder) == NNUNET and detect_format(folder.parent) == NNUNET  # dataset folder too
    with pytest.raises(ModelError, match="not a model folder"):
        detect_format(folder / "fold_0")
    assert [m.path.parent.name for m in model.description.members] == ["fold_0", "fold_1"]
    assert model.description.labels == {0: "background", 1: "organ1", 2: "organ2"}
    assert isinstance(load_model(folder), NnUNetModel)


def test_each_fold_pass_is_nnunets_own_output_at_the_plans_spacing(tiny):
    folder, weights, model = tiny
    image = ct_like_image()  # 1 mm, the plans' spacing; a rotated direction, which nnU-Net ignores
    for fold, w in enumerate(weights):
        expected = nnunet_reference(folder, w, image)
        ours = run_one(model, image, SampleSpec(fold))
        assert ours.shape == expected.shape == (3, *sitk.GetArrayViewFromImage(image).shape)
        assert np.abs(ours - expected).max() <= 1e-3
        assert np.all(ours[0, :2] == 1.0)  # background 1 outside nnU-Net's non-zero crop


def test_ensemble_is_the_mean_of_the_folds_softmax_and_its_maps_and_scores_follow(tiny):
    folder, weights, model = tiny
    image = ct_like_image(seed=3)
    folds = np.stack([nnunet_reference(folder, w, image) for w in weights])  # (M, C, z, y, x)
    out = segment_image(image, model, SegmentOptions(method="ensemble"))
    mean = folds.mean(0)
    for k, name in ((1, "organ1"), (2, "organ2")):
        assert np.abs(sitk.GetArrayFromImage(out.probabilities[name]) - mean[k]).max() <= 1e-3
    assert np.array_equal(sitk.GetArrayFromImage(out.segmentation), mean.argmax(0))

    def h(p):  # normalized entropy over the class axis
        return -(p * np.log(np.clip(p, 1e-30, None))).sum(-4) / math.log(3)

    mi = np.clip(h(mean) - h(folds).mean(0), 0, None)
    variance = (folds.var(0, ddof=1)).max(0)
    assert np.abs(sitk.GetArrayFromImage(out.maps["mutual_information"]) - mi).max() <= 1e-3
    assert np.abs(sitk.GetArrayFromImage(out.maps["variance"]) - variance).max() <= 1e-3
    labels = folds.argmax(1)
    expected_entropy = h(folds).mean(0) * math.log(3)  # nats
    for k, name in ((1, "organ1"), (2, "organ2")):
        assert out.scores["classes"][name]["dpw"] == pytest.approx(dice(labels[0] == k, labels[1] == k), abs=1e-9)
        inside = mean.argmax(0) == k  # ulabelled: E_t[H(p_t)] (not H(E_t p)) over the segment
        assert out.scores["classes"][name]["ulabelled"] == pytest.approx(expected_entropy[inside].mean(), abs=1e-4)
    assert any("averages the logits" in note for note in out.notes)
    seg = out.segmentation
    assert seg.GetDirection() == image.GetDirection() and seg.GetOrigin() == image.GetOrigin()


def test_outputs_kept_in_a_scratch_folder_are_the_in_memory_outputs(tiny, tmp_path, monkeypatch):
    """Every array that can wait in a file does (SPILL_BYTES 0): the same images bit for bit and the same
    scores; the volumes are read from the scratch folder at each lookup, the rest of it is cleaned up."""
    from SegUncertaintyLib.core import spill
    from SegUncertaintyLib.inference.volume_store import StoredImages

    _, _, model = tiny
    image = ct_like_image(seed=5)
    in_memory = segment_image(image, model, SegmentOptions(method="ensemble"))
    monkeypatch.setattr(spill, "SPILL_BYTES", 0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    in_files = segment_image(image, model, SegmentOptions(method="ensemble"), scratch=scratch)
    assert isinstance(in_files.maps, StoredImages) and isinstance(in_files.probabilities, StoredImages)
    assert sorted(p.name for p in scratch.iterdir()) == sorted(
        f"{n}.raw" for n in ("entropy", "mutual_information", "variance", "expected_entropy",
                             "probability_1", "probability_2"))  # inputs, logits and sums removed
    assert in_files.scores == in_memory.scores
    for a, b in [(in_memory.segmentation, in_files.segmentation),
                 *[(in_memory.maps[n], in_files.maps[n]) for n in in_memory.maps],
                 *[(in_memory.probabilities[n], in_files.probabilities[n]) for n in in_memory.probabilities]]:
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetDirection() == b.GetDirection() and a.GetOrigin() == b.GetOrigin()
    assert sorted(in_files.model_grid_maps) == sorted(in_memory.model_grid_maps)
    assert np.array_equal(in_files.model_grid_maps["variance"], in_memory.model_grid_maps["variance"])


@pytest.mark.parametrize("plans_spacing, image_spacing", [
    ((1.5, 1.0, 1.2), (0.9, 1.3, 1.1)),  # resampled in 3D (order 1)
    ((4.0, 1.0, 1.0), (1.1, 0.9, 2.0)),  # anisotropic plans: in-plane order 1, then order 0 along the low axis
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),  # not resampled (the plans' spacing)
])
@pytest.mark.parametrize("kept_in_files", [False, True])
def test_slabbed_pass_equals_nnunets_whole_volume_export_of_the_same_logits(tmp_path, monkeypatch, plans_spacing,
                                                                             image_spacing, kept_in_files):
    """Also with the preprocessed input and the logits waiting in files (as a CT's do): the same numbers,
    and the logits' file gone once the pass has been handed over."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from SegUncertaintyLib.core import spill
    from SegUncertaintyLib.core.spill import RawArray
    from SegUncertaintyLib.models.adapters import nnunet

    plans = tiny_plans(spacing=plans_spacing, transpose_forward=(2, 0, 1))
    folder, _ = make_nnunet_model(tmp_path, folds=1, plans=plans)
    model = NnUNetModel(folder)
    image = ct_like_image(shape_zyx=(14, 23, 19), spacing_xyz=image_spacing)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(spill, "SPILL_BYTES", 0 if kept_in_files else 1 << 40)
    prepared = model.prepare(image, torch.device("cpu"), scratch)
    assert isinstance(prepared.data, RawArray) == kept_in_files
    monkeypatch.setattr(nnunet, "SLAB_VOXELS", 1)  # one plane per slab
    slabbed = model.run_pass(prepared, SampleSpec(0))
    assert sorted(p.name.split("-")[1] for p in scratch.iterdir()) == (["input"] if kept_in_files else [])
    predictor, properties = prepared.predictor, prepared.properties
    logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(prepared.data.load())).cpu()
    if plans_spacing == image_spacing:
        _, whole = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, model.plans_manager, model.configuration_manager, model.label_manager, dict(properties),
            return_probabilities=True)
        assert np.abs(slabbed - whole).max() <= 1e-6
        return
    assert tuple(logits.shape[1:]) != tuple(properties["shape_after_cropping_and_before_resampling"])
    _, whole = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager, dict(properties),
        return_probabilities=True)
    assert slabbed.shape == whole.shape == (3, 14, 23, 19)
    assert np.abs(slabbed - whole).max() <= 1e-6
    assert np.all(slabbed[0, :2] == 1.0) and np.all(slabbed[1:, :2] == 0.0)  # outside nnU-Net's crop


def test_resampling_and_transposed_plans_match_nnunet_argmax(tmp_path):
    plans = tiny_plans(spacing=(1.5, 1.0, 1.2), transpose_forward=(2, 0, 1))
    folder, weights = make_nnunet_model(tmp_path, folds=1, plans=plans)
    model = NnUNetModel(folder)
    image = ct_like_image(shape_zyx=(18, 30, 25), spacing_xyz=(0.9, 1.3, 1.1))
    expected = nnunet_reference(folder, weights[0], image)
    ours = run_one(model, image, SampleSpec(0))
    assert ours.shape == expected.shape
    a, b = ours.argmax(0), expected.argmax(0)
    assert all(dice(a == k, b == k) >= 0.99 for k in (1, 2) if (b == k).any())
    assert np.mean(np.abs(ours - expected) <= 1e-3) >= 0.999


def test_tta_flips_only_the_allowed_axes_as_nnunet_mirrors_its_tiles(tmp_path):
    folder, weights = make_nnunet_model(tmp_path, folds=1, mirror_axes=(1, 2))
    model = NnUNetModel(folder)
    plan = model.plan("tta", None)
    assert [s.flip for s in plan] == [(), (1,), (2,), (1, 2)]
    image = ct_like_image(seed=5)  # at the plans' spacing: no resampling of logits
    plain, mirrored = (run_one(model, image, SampleSpec(0, flip)) for flip in ((), (2,)))
    assert np.abs(plain - mirrored).max() > 0.01  # a flip is a different sample
    # nnU-Net with mirroring over axis 2 gives softmax((l + l_flip) / 2), i.e. the normalized geometric
    # mean of the two passes' softmax outputs: each pass must be nnU-Net's own per-tile mirrored prediction.
    nnunet = nnunet_reference(folder, weights[0], image, mirror_axes=(2,))
    geometric = np.sqrt(plain * mirrored)
    geometric /= geometric.sum(0, keepdims=True)
    # nnU-Net sums tile logits in float16 (up to ~0.2 apart at a few voxels here): compare shares. Flipping
    # the whole volume instead of each tile gives 81 % within 1e-3 and 94 % within 1e-2 on this case.
    difference = np.abs(geometric - nnunet)
    assert np.mean(difference <= 1e-3) >= 0.97 and np.mean(difference <= 1e-2) >= 0.99
    assert np.mean(geometric.argmax(0) == nnunet.argmax(0)) >= 0.999


def test_no_mirroring_trainer_refuses_tta_and_one_fold_refuses_ensemble(tmp_path):
    folder, _ = make_nnunet_model(tmp_path, folds=1, mirror_axes=None, trainer="nnUNetTrainer_4000epochs_NoMirroring")
    model = NnUNetModel(folder)  # found although an earlier trainer module (primus: timm) fails to import
    assert model.notes == []
    with pytest.raises(ModelError, match="without mirroring"):
        model.plan("tta", None)
    with pytest.raises(ModelError, match="one fold"):
        model.plan("ensemble", None)
    assert model.description.methods == ("softmax",)


def test_checkpoint_best_when_final_is_absent(tmp_path):
    folder, weights = make_nnunet_model(tmp_path, folds=2, checkpoint_name="checkpoint_best.pth")
    model = NnUNetModel(folder)
    assert [m.path.name for m in model.description.members] == ["checkpoint_best.pth"] * 2
    image = ct_like_image()
    assert np.abs(run_one(model, image, SampleSpec(1)) - nnunet_reference(folder, weights[1], image)).max() <= 1e-3


def test_mc_dropout_only_with_dropout_layers_and_samples_differ(tmp_path):
    folder, _ = make_nnunet_model(tmp_path, folds=1, plans=tiny_plans(dropout=0.3))
    model = NnUNetModel(folder)
    assert "mc_dropout" in model.description.methods
    out = segment_image(ct_like_image(), model, SegmentOptions(method="mc_dropout", samples=3, seed=1))
    assert float(sitk.GetArrayFromImage(out.maps["variance"]).max()) > 1e-4
    again = segment_image(ct_like_image(), model, SegmentOptions(method="mc_dropout", samples=3, seed=1))
    assert np.array_equal(sitk.GetArrayFromImage(out.maps["variance"]), sitk.GetArrayFromImage(again.maps["variance"]))


def test_cli_segment_with_an_nnunet_folder_writes_maps_scores_and_readings(tiny, tmp_path, capsys):
    folder, _, _ = tiny
    model_dir = tmp_path / "model"
    shutil.copytree(folder, model_dir)
    reference = {"source": "test bounds", "method": "ensemble", "n_samples": 2,
                 "classes": {"organ2": {"dpw": {"review_below": 1.01}}}}
    (model_dir / "score_reference.json").write_text(json.dumps(reference))
    image_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct_like_image(), str(image_path))
    out = tmp_path / "out"
    rc = main(["segment", str(image_path), "--model", str(model_dir), "--method", "ensemble", "--out", str(out),
               "--progress", "none", "--format", "nii.gz"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_samples"] == 2 and manifest["labels"] == {"0": "background", "1": "organ1", "2": "organ2"}
    assert any("averages the logits" in note for note in manifest["notes"])
    for name in ("entropy", "mutual_information", "variance", "expected_entropy", "probability_organ1"):
        assert (out / f"{name}.nii.gz").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["readings"]["organ2"]["dpw"]["reading"] == "review recommended"
    assert "review recommended" in capsys.readouterr().out  # the result on stdout
    # the command line keeps the volumes in a scratch folder beside the output: the same numbers as in
    # memory, and the folder gone afterwards
    in_memory = segment_image(ct_like_image(), tiny[2], SegmentOptions(method="ensemble"))
    for name in ("variance", "entropy"):
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}.nii.gz")))
        assert np.array_equal(written, sitk.GetArrayFromImage(in_memory.maps[name]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "model", "out"]


def _break_missing_fold(folder):
    (folder / "fold_1" / "checkpoint_final.pth").unlink()


def _break_plans_mismatch(folder):
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    (folder / "plans.json").write_text(json.dumps(plans))


def _break_normalization(folder):
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MagicNormalization"]
    (folder / "plans.json").write_text(json.dumps(plans))


def _break_two_channels(folder):
    (folder / "dataset.json").write_text(json.dumps(tiny_dataset_json(channels={"0": "T1", "1": "T2"})))


def _break_regions(folder):
    data = tiny_dataset_json()
    data["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    data["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(data))


def _break_unsafe_checkpoint(folder):
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["payload"] = shutil.rmtree  # an arbitrary callable: must never be unpickled
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")


def _break_cascade(folder):
    """The folder becomes a 3d_cascade_fullres model (previous_stage 3d_lowres, two input channels more)."""
    shutil.rmtree(folder)
    plans = tiny_plans(configuration="3d_lowres")
    made, _ = make_nnunet_model(folder.parent / "made", plans=plans, configuration="3d_cascade_fullres")
    shutil.copytree(made, folder)


@pytest.mark.parametrize("breaker, words", [
    (_break_missing_fold, "fold_1 has no checkpoint_final.pth"),
    (_break_cascade, "cascade stage (needs the output of '3d_lowres'): not supported; use that stage's own folder"),
    (_break_plans_mismatch, "does not match the network"),
    (_break_normalization, "unknown normalization scheme 'MagicNormalization'"),
    (_break_two_channels, "needs 2 input channels"),
    (_break_regions, "region-based"),
    (_break_unsafe_checkpoint, "cannot be loaded safely"),
])
def test_bad_nnunet_folders_exit_4_with_one_line(tiny, tmp_path, capsys, breaker, words):
    folder = tmp_path / "model"
    shutil.copytree(tiny[0], folder)
    breaker(folder)
    image_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct_like_image(shape_zyx=(8, 8, 8)), str(image_path))
    rc = main(["segment", str(image_path), "--model", str(folder), "--method", "ensemble",
               "--out", str(tmp_path / "out"), "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 4
    assert len(err.splitlines()) == 1 and err.startswith("seguncertainty: error:") and words in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_models_add_list_use_by_name_and_remove_an_nnunet_folder(tiny, tmp_path, monkeypatch, capsys):
    from SegUncertaintyLib.models.card import sha256_file

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    source = tmp_path / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(tiny[0], source)
    shutil.copyfile(source / "fold_0" / "checkpoint_final.pth", source / "fold_0" / "checkpoint_best.pth")
    (source / "fold_0" / "validation").mkdir()
    (source / "fold_0" / "validation" / "summary.json").write_text("{}")
    (source / "progress.png").write_bytes(b"not part of the model")
    assert main(["models", "check", str(source)]) == 0
    assert main(["models", "add", str(source.parent), "--name", "tiny-nnunet"]) == 0  # the dataset folder
    installed = tmp_path / "home" / "models" / "tiny-nnunet"
    inner = "nnUNetTrainer__nnUNetPlans__3d_fullres/"
    expected = {inner + n for n in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth",
                                    "fold_1/checkpoint_final.pth")}
    assert {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()} == expected
    recorded = json.loads((installed.parent / "installed.json").read_text())["models"]["tiny-nnunet"]
    assert recorded["format"] == "nnunet"
    assert recorded["files"] == {rel: sha256_file(source.parent / rel) for rel in expected}
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["tiny-nnunet"]
    assert row["format"] == "nnunet" and row["status"] == "ok" and row["members"] == 2
    assert row["labels"] == {"0": "background", "1": "organ1", "2": "organ2"}
    assert row["methods"] == ["softmax", "ensemble", "tta"]

    image_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct_like_image((10, 12, 14)), str(image_path))
    maps = {}
    for model in ("tiny-nnunet", str(source)):
        out = tmp_path / f"out-{len(maps)}"
        assert main(["segment", str(image_path), "--model", model, "--method", "ensemble", "--out", str(out),
                     "--progress", "none", "--no-overview", "--format", "nii.gz"]) == 0
        maps[model] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "probability_organ1.nii.gz")))
    assert json.loads((tmp_path / "out-0" / "manifest.json").read_text())["model"]["name"] == "tiny-nnunet"
    assert np.array_equal(maps["tiny-nnunet"], maps[str(source)])  # by name = by path

    assert main(["models", "remove", "tiny-nnunet"]) == 0
    assert not installed.exists()
    assert "tiny-nnunet" not in json.loads((installed.parent / "installed.json").read_text())["models"]


def test_broken_installed_nnunet_model_is_listed_with_its_reason(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    assert main(["models", "add", str(tiny[0]), "--name", "tiny-nnunet"]) == 0
    shutil.copytree(tiny[0], tmp_path / "home" / "models" / "by-hand")  # not added: checked by loading
    for name in ("tiny-nnunet", "by-hand"):
        (tmp_path / "home" / "models" / name / "fold_1" / "checkpoint_final.pth").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-nnunet  BROKEN (nnunet): Installed model tiny-nnunet: fold_1/checkpoint_final.pth is missing " \
           "or changed since 'models add' (size differs)" in out
    assert "by-hand  BROKEN (nnunet): nnU-Net checkpoint fold_1/checkpoint_final.pth cannot be loaded safely" in out
    assert "brainmask-t1" in out  # the others are still listed
    (tmp_path / "home" / "models" / "tiny-nnunet" / "fold_1" / "checkpoint_final.pth").write_bytes(
        (tiny[0] / "fold_0" / "checkpoint_final.pth").read_bytes())  # same size, other fold's weights
    assert main(["models", "list"]) == 0 and "tiny-nnunet  nnU-Net v2 (nnUNetTrainer)  " in capsys.readouterr().out
    assert main(["models", "list", "--verify"]) == 4
    out = capsys.readouterr().out
    assert "fold_1/checkpoint_final.pth is missing or changed since 'models add' (sha256 differs)" in out


@pytest.mark.parametrize("image_spacing", [(1.0, 1.0, 3.0), (0.8, 1.3, 2.0)])
def test_a_2d_configuration_is_nnunets_own_output_slice_by_slice(tmp_path, image_spacing):
    """nnU-Net's 2d configuration (a 2D network over each slice, in-plane spacing only in the plans): each
    fold's pass equals nnunetv2's own predictor at the plans' in-plane spacing, and its argmax where
    in-plane resampling is involved."""
    plans = tiny_plans(spacing=(3.0, 1.0, 1.0), patch_size=(1, 16, 16), configuration="2d")
    folder, weights = make_nnunet_model(tmp_path, folds=2, plans=plans, mirror_axes=(0, 1))
    model = NnUNetModel(folder)
    image = ct_like_image(shape_zyx=(8, 26, 22), spacing_xyz=image_spacing)
    for fold, w in enumerate(weights):
        expected = nnunet_reference(folder, w, image)
        ours = run_one(model, image, SampleSpec(fold))
        assert ours.shape == expected.shape == (3, *sitk.GetArrayViewFromImage(image).shape)
        if image_spacing[:2] == (1.0, 1.0):
            assert np.abs(ours - expected).max() <= 1e-3
        a, b = ours.argmax(0), expected.argmax(0)
        assert all(dice(a == k, b == k) >= 0.99 for k in (1, 2) if (b == k).any())
        assert np.mean(np.abs(ours - expected) <= 1e-3) >= 0.999


def _lowres_model(root, fullres_spacing=(1.0, 1.0, 1.0), lowres_spacing=(2.2, 1.9, 1.7), transpose=(0, 1, 2),
                  image=None):
    """A 2-fold 3d_lowres model (plans with 3d_fullres, 3d_lowres and 3d_cascade_fullres; spacings in the
    transposed axis order), a CT-like image at the 3d_fullres spacing, and each fold's output from nnunetv2's
    own predictor on it."""
    plans = tiny_plans(spacing=fullres_spacing, transpose_forward=transpose, configuration="3d_lowres",
                       lowres_spacing=lowres_spacing)
    folder, weights = make_nnunet_model(root, folds=2, plans=plans)
    image = image or ct_like_image(seed=7)  # 1 mm: the default 3d_fullres spacing
    return folder, image, [nnunet_reference(folder, w, image) for w in weights]


@pytest.fixture(scope="module")
def lowres(tmp_path_factory):
    return _lowres_model(tmp_path_factory.mktemp("lowres"))


@pytest.mark.parametrize("anisotropic", [False, True])
def test_a_3d_lowres_configuration_is_nnunets_own_output_resampled_down_and_back(lowres, tmp_path, anisotropic):
    """3d_lowres inherits from 3d_fullres in plans.json (resolved by nnunetv2's PlansManager) with its own
    spacing, patch and network: an image at the fullres spacing is resampled down to the lowres grid and the
    logits back, and each fold's pass is nnunetv2's own predictor output for that fold. Anisotropic: 4 mm
    along x (transposed first: the plans' low-resolution axis), resampled in-plane then with order 0 along it,
    and an x extent below the lowres patch (nnU-Net pads)."""
    lowres_spacing = (4.4, 2.0, 2.0) if anisotropic else (2.2, 1.9, 1.7)  # transposed (z, y, x) for isotropic
    folder, image, references = _lowres_model(
        tmp_path, (4.0, 1.0, 1.0), lowres_spacing, (2, 0, 1),
        ct_like_image((20, 26, 9), (4.0, 1.0, 1.0), seed=7)) if anisotropic else lowres
    model = NnUNetModel(folder)
    assert folder.name.endswith("__3d_lowres") and model.configuration_manager.previous_stage_name is None
    backward = model.plans_manager.transpose_backward
    assert model.description.info["spacing_mm"] == tuple(reversed([lowres_spacing[i] for i in backward]))
    assert model.description.info["patch_size"] == (8, 8, 8)
    prepared = model.prepare(image, torch.device("cpu"))
    cropped = prepared.properties["shape_after_cropping_and_before_resampling"]  # transposed, at the fullres spacing
    fullres = model.plans_manager.get_configuration("3d_fullres").spacing
    assert tuple(prepared.data.shape[1:]) == tuple(round(n * f / s) for n, f, s in
                                                 zip(cropped, fullres, lowres_spacing, strict=True))
    for fold, expected in enumerate(references):
        ours = model.run_pass(prepared, SampleSpec(fold))
        assert ours.shape == expected.shape == (3, *sitk.GetArrayViewFromImage(image).shape)
        a, b = ours.argmax(0), expected.argmax(0)
        dices = [dice(a == k, b == k) for k in (1, 2)]
        difference = np.abs(ours - expected)
        within = float(np.mean(difference <= 1e-3))
        print(f"3d_lowres (anisotropic {anisotropic}) fold {fold}: share within 1e-3 {within:.6f}, "
              f"max |diff| {difference.max():.3g}, Dice {dices}")
        assert all((b == k).sum() > 50 for k in (1, 2))  # both classes present: the Dice is meaningful
        assert min(dices) >= 0.99
        # Measured here (x86_64, 2 cores, CPU): 100 % within 1e-3, max |diff| ~1e-7: each pass resamples
        # nnU-Net's own float16 logits back with its own function. The bounds leave room for the float16 tile
        # sums (up to ~0.1 apart at a handful of voxels). Resampling back with order 0 or 3
        # instead of the plans' order 1 gives 26 % and 32 % within 1e-3; in the anisotropic case, without
        # the separate order-0 pass along the low-resolution axis (or with order 1 there) 42 %.
        assert within >= 0.999 and difference.max() <= 0.1
        assert np.all(ours[0, :2] == 1.0)  # background 1 outside nnU-Net's non-zero crop


def test_cli_ensemble_with_a_3d_lowres_folder_is_the_mean_of_nnunets_fold_outputs(lowres, tmp_path):
    folder, image, references = lowres
    image_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(image_path))
    out = tmp_path / "out"
    assert main(["segment", str(image_path), "--model", str(folder), "--method", "ensemble", "--out", str(out),
                 "--progress", "none", "--no-overview", "--format", "nii.gz"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_samples"] == 2
    for name in ("entropy", "mutual_information", "variance", "expected_entropy"):
        assert (out / f"{name}.nii.gz").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["classes"]) >= {"organ1", "organ2"}
    mean = np.mean(references, axis=0)  # (C, z, y, x): the folds' nnunetv2 softmax outputs, averaged
    for k, name in ((1, "organ1"), (2, "organ2")):
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"probability_{name}.nii.gz")))
        difference = np.abs(ours - mean[k])
        print(f"3d_lowres ensemble {name}: share within 1e-3 {np.mean(difference <= 1e-3):.6f}, "
              f"max |diff| {difference.max():.3g}")
        assert np.mean(difference <= 1e-3) >= 0.999 and difference.max() <= 0.1  # as per fold above
    labels = np.stack(references).argmax(1)
    assert scores["classes"]["organ2"]["dpw"] == pytest.approx(dice(labels[0] == 2, labels[1] == 2), abs=1e-6)


def test_models_add_names_nnunet_models_after_their_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    first, _ = make_nnunet_model(tmp_path / "a")
    second, _ = make_nnunet_model(tmp_path / "b", plans={**tiny_plans(), "dataset_name": "Dataset123_Liver"},
                                  trainer="nnUNetTrainer_5epochs")
    assert first.name == second.name.replace("_5epochs", "")  # the trainer folders alone cannot tell them apart
    assert main(["models", "add", str(first)]) == 0
    assert main(["models", "add", str(second)]) == 0  # no "already installed"
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) >= {"Dataset999_Tiny-3d_fullres", "Dataset123_Liver-3d_fullres-nnUNetTrainer_5epochs"}
    assert "  nnU-Net v2 (nnUNetTrainer)  Dataset999_Tiny  " in lines["Dataset999_Tiny-3d_fullres"]
    assert "vnnU-Net" not in "".join(lines.values())
