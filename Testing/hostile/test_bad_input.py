"""Bad images, models and output folders: one clear error naming the problem, nothing half-written."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from SegUncertaintyLib.core.errors import ChecksumError, InputImageError, ModelError, OutputError
from SegUncertaintyLib.evaluation.report import report_folder
from SegUncertaintyLib.inference.model_grid import check_method
from SegUncertaintyLib.io.images import read_image, validate_image
from SegUncertaintyLib.models.card import load_card, write_card
from SegUncertaintyLib.models.loader import load_model
from SegUncertaintyLib.results.run_folder import output_folder
from Testing.support.phantoms import sphere_phantom


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def test_good_image_reads_as_float32(tmp_path):
    image = read_image(write(sphere_phantom(), tmp_path / "ok.nrrd"))
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetDimension() == 3


@pytest.mark.parametrize("make, message", [
    (lambda: sitk.Image([20, 20], sitk.sitkFloat32) + 1.0, "2D"),
    (lambda: sitk.JoinSeries([sphere_phantom(), sphere_phantom()]), "4D"),
    (lambda: sitk.Image([20, 20, 20], sitk.sitkFloat32), "constant"),
    (lambda: sitk.Image([20, 20, 1], sitk.sitkFloat32) + 1.0, "at least 2 voxels"),
    (lambda: sitk.Compose([sphere_phantom()] * 3), "components"),
])
def test_unusable_images_are_refused(make, message, tmp_path):
    path = write(make(), tmp_path / "bad.nii.gz")
    with pytest.raises(InputImageError, match=message):
        read_image(path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_refused_with_their_count(value):
    array = sitk.GetArrayFromImage(sphere_phantom())
    array[3, 4, 5] = array[6, 7, 8] = value
    image = sitk.GetImageFromArray(array)
    with pytest.raises(InputImageError, match="2 NaN or infinite"):
        validate_image(image)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nii"])
def test_truncated_and_garbage_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    write(sphere_phantom(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="Cannot read"):
        read_image(path)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputImageError, match="Cannot read"):
        read_image(garbage)


def test_missing_file_and_empty_dicom_folder(tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        read_image(tmp_path / "nope.nii.gz")
    with pytest.raises(InputImageError, match="DICOM"):
        read_image(tmp_path)


def test_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for folder in (output_folder(blocker / "out"), report_folder(blocker / "out")):
        with pytest.raises(OutputError, match="Cannot write to output folder"), folder:
            pass


def test_checksum_mismatch_is_refused(threshold_model, tmp_path):
    model = tmp_path / "tampered"
    shutil.copytree(threshold_model, model)
    with open(model / "member1.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match="member1.pt"):
        load_model(model)


def test_missing_weight_and_missing_model(threshold_model):
    (threshold_model / "member0.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(threshold_model)
    with pytest.raises(ModelError, match="not found"):
        load_model("no-such-model")


@pytest.mark.parametrize("field", ["labels", "preprocessing", "patch_size", "members"])
def test_card_without_a_required_field_is_refused(threshold_model, field):
    import json

    path = threshold_model / "card.json"
    data = json.loads(path.read_text())
    del data[field]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=field):
        load_card(threshold_model)


def test_user_torchscript_model_without_dropout_refuses_mc_dropout(tmp_path):
    net = torch.jit.script(nn.Conv3d(1, 2, 1))
    net.save(str(tmp_path / "net.pt"))
    write_card({"name": "plain", "version": "1", "task": "t", "modality": "m",
                "labels": {"0": "bg", "1": "fg"},
                "preprocessing": {"spacing_mm": [2, 2, 2], "orientation": "LPS", "intensity": {"method": "none"}},
                "patch_size": [16, 16, 16], "methods": ["softmax", "mc_dropout", "tta"],
                "tta_flips": ["LR"], "architecture": {"type": "torchscript"},
                "members": [{"file": "net.pt"}]}, tmp_path)
    model = load_model(tmp_path)
    check_method(model, "softmax")
    with pytest.raises(ModelError, match="no dropout"):
        check_method(model, "mc_dropout")
    with pytest.raises(ModelError, match="ensemble"):
        check_method(model, "ensemble")
