"""ONNX models with a card: an export of a MONAI UNet (torch.onnx.export, here) against the same network
run by torch through its own card; MC dropout refused; bad ONNX files give exit 4 and one line."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import UNet

from SegUncertaintyLib.cli import main
from SegUncertaintyLib.models import catalog, registry
from SegUncertaintyLib.models.card import write_card
from Testing.support.phantoms import sphere_phantom

PATCH_XYZ = (16, 12, 8)  # not a cube: the graph's fixed (z, y, x) = (8, 12, 16) checks the axis order
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
        "num_res_units": 0}
pytestmark = [pytest.mark.onnx,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # torch's legacy ONNX exporter


def export(net: torch.nn.Module, path: Path, inputs: tuple, batch_fixed: bool = False) -> None:
    """torch.onnx.export with the exporter that needs no onnxscript; batch axis dynamic unless ``batch_fixed``."""
    names = [f"input{i}" for i in range(len(inputs))]
    dynamic = None if batch_fixed else {n: {0: "batch"} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), inputs, str(path), dynamo=False, input_names=names,
                          output_names=["logits"], dynamic_axes=dynamic)


def card(name: str, architecture: dict, files: list[str]) -> dict:
    return {"name": name, "labels": {"0": "background", "1": "sphere"},
            "preprocessing": {"spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS",
                              "intensity": {"method": "zscore"}},
            "patch_size": list(PATCH_XYZ), "methods": ["softmax", "ensemble", "tta"], "tta_flips": ["LR"],
            "architecture": architecture, "members": [{"file": f, "sha256": ""} for f in files]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same two seeded UNets as a MONAI state-dict card and as an ONNX card (member 1 with batch 1 fixed)."""
    root = tmp_path_factory.mktemp("onnx")
    torch_dir, onnx_dir = root / "torch_unet", root / "onnx_unet"
    torch_dir.mkdir()
    onnx_dir.mkdir()
    window = torch.zeros(1, 1, *reversed(PATCH_XYZ))
    for m in range(2):
        torch.manual_seed(m)
        net = UNet(**UNET).eval()
        torch.save(net.state_dict(), torch_dir / f"member{m}.pt")
        export(net, onnx_dir / f"member{m}.onnx", (window,), batch_fixed=m == 1)
    write_card(card("unet-torch", {"type": "monai", "name": "UNet", "kwargs": UNET}, ["member0.pt", "member1.pt"]),
               torch_dir)
    write_card(card("unet-onnx", {"type": "onnx"}, ["member0.onnx", "member1.onnx"]), onnx_dir)
    image = root / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom((26, 24, 20), (3.0, 3.0, 3.0), radius_mm=20.0, noise=0.05), str(image))
    return torch_dir, onnx_dir, image


def segment(image: Path, model: Path | str, out: Path, method: str) -> int:
    return main(["segment", str(image), "--model", str(model), "--method", method, "--out", str(out),
                 "--progress", "none", "--no-overview", "--format", "nii.gz"])


def test_onnx_export_gives_the_torch_networks_maps(pair, tmp_path):
    torch_dir, onnx_dir, image = pair
    assert registry.detect_format(onnx_dir) == "onnx" and registry.detect_format(torch_dir) == "card"
    for way, folder in (("torch", torch_dir), ("onnx", onnx_dir)):
        assert segment(image, folder, tmp_path / way, "ensemble+tta") == 0
    for name in ("probability_sphere", "entropy", "variance", "mutual_information"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / way / f"{name}.nii.gz")))
                for way in ("torch", "onnx"))
        assert a.std() > 1e-3, name  # the maps are not trivially constant
        assert np.abs(a - b).max() <= 1e-4, name
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["n_samples"] == 4  # 2 members x (no flip, the declared LR flip)


def test_onnx_model_is_added_listed_and_used_by_name(pair, tmp_path, monkeypatch, capsys):
    _, onnx_dir, image = pair
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    assert main(["models", "add", str(onnx_dir)]) == 0
    installed = tmp_path / "home" / "models" / "unet-onnx"
    assert sorted(p.name for p in installed.iterdir()) == ["card.json", "member0.onnx", "member1.onnx"]
    row = next(e for e in catalog.list_models(verify=True) if e.name == "unet-onnx")
    assert row.format == "onnx" and row.error is None and row.summary.members == 2
    assert segment(image, "unet-onnx", tmp_path / "by-name", "softmax") == 0


def test_mc_dropout_is_refused_with_the_reason(pair, tmp_path, capsys):
    _, onnx_dir, image = pair
    assert segment(image, onnx_dir, tmp_path / "out", "mc_dropout") == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ONNX graph has no train-mode dropout" in err
    listed = tmp_path / "listed"
    shutil.copytree(onnx_dir, listed)
    data = json.loads((listed / "card.json").read_text())
    data["methods"] = ["softmax", "mc_dropout"]
    (listed / "card.json").write_text(json.dumps(data))
    assert main(["models", "check", str(listed)]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "field 'methods' lists mc_dropout" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


class TwoInputs(torch.nn.Module):
    def forward(self, a, b):
        return torch.cat([a, b], 1)


def _garbage(folder: Path) -> None:
    (folder / "member0.onnx").write_bytes(b"\x00garbage, not a protobuf\xff" * 8)


def _two_inputs(folder: Path) -> None:
    x = torch.zeros(1, 1, *reversed(PATCH_XYZ))
    export(TwoInputs(), folder / "member0.onnx", (x, x))


def _two_channels(folder: Path) -> None:
    export(UNet(**{**UNET, "in_channels": 2}), folder / "member0.onnx",
           (torch.zeros(1, 2, *reversed(PATCH_XYZ)),))


def _other_window(folder: Path) -> None:
    export(UNet(**UNET), folder / "member0.onnx", (torch.zeros(1, 1, *PATCH_XYZ),))  # x y z order: wrong


@pytest.mark.parametrize("breaker, words", [
    (_garbage, "member0.onnx cannot be loaded by onnxruntime"),
    (_two_inputs, "member0.onnx has 2 inputs; expected one float32 input (N, 1, z, y, x)"),
    (_two_channels, "member0.onnx takes 2 input channels; expected one float32 input"),
    (_other_window, "member0.onnx has the fixed spatial input size (16, 12, 8) (z y x) but the card's patch_size"),
])
def test_bad_onnx_files_exit_4_with_one_line(pair, tmp_path, capsys, breaker, words):
    _, onnx_dir, image = pair
    folder = tmp_path / "bad"
    shutil.copytree(onnx_dir, folder)
    breaker(folder)
    write_card(json.loads((folder / "card.json").read_text()), folder)  # the sha256 matches: the graph is bad
    for args in (["models", "check", str(folder)],
                 ["segment", str(image), "--model", str(folder), "--method", "ensemble", "--out",
                  str(tmp_path / "out"), "--progress", "none"]):
        assert main(args) == 4
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("seguncertainty: error:") and words in err, err
    assert not (tmp_path / "out").exists()
