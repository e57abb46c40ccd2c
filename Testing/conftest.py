"""Shared fixtures: synthetic phantoms with a known, tunable boundary ambiguity and small models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from SegUncertaintyLib.models.card import write_card


def sphere_phantom(size=(40, 36, 32), spacing=(2.0, 2.5, 3.0), radius_mm=25.0, blur_mm=3.0,
                   direction=None, origin=(-40.0, -45.0, -48.0), noise=0.0, seed=0) -> sitk.Image:
    """A bright sphere (1) on dark background (0) whose edge is a logistic ramp of width ``blur_mm``.

    Voxel values are 1 / (1 + exp((r - radius) / blur)), so the 0.5 level set is the sphere of radius
    ``radius_mm`` around the image centre, in physical space (any spacing and direction).
    """
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    d = np.array(image.GetDirection()).reshape(3, 3)
    pts = np.array(origin) + (idx * np.array(spacing)) @ d.T
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    r = np.linalg.norm(pts - centre, axis=1)
    values = 1.0 / (1.0 + np.exp((r - radius_mm) / blur_mm))
    values = values + np.random.default_rng(seed).normal(0, noise, values.shape) if noise else values
    array = values.reshape(size).transpose(2, 1, 0).astype(np.float32)  # (x,y,z) -> (z,y,x)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


class DropoutContextNet(nn.Module):
    """3x3x3 convolutions with dropout between them: every window draws its own dropout masks."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.Tanh(), nn.Dropout(0.3),
                                  nn.Conv3d(8, 3, 3, padding=1))

    def forward(self, x):
        return self.body(x) * 3


class ThresholdNet(nn.Module):
    """logit(foreground) = gain * (dropout(x) - 0.5): a pointwise segmenter with MC dropout.

    Dropout acts on the input, so samples disagree only where the input is near the threshold.
    """

    def __init__(self, gain: float = 8.0, p: float = 0.2):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        self.dropout = nn.Dropout(p)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-gain, gain]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([gain * 0.5, -gain * 0.5]))

    def forward(self, x):
        return self.conv(self.dropout(x))


def write_threshold_model(folder: Path, members: int = 2, spacing=(3.0, 3.0, 3.0), patch=(16, 16, 16),
                          torchscript: bool = True, gains=(8.0, 6.0, 10.0)) -> Path:
    """A TorchScript (or state-dict) threshold model with a card; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for m in range(members):
        net = ThresholdNet(gain=gains[m % len(gains)]).eval()
        name = f"member{m}.pt"
        if torchscript:
            torch.jit.script(net).save(str(folder / name))
        else:
            torch.save(net.state_dict(), folder / name)
        entries.append({"file": name, "sha256": ""})
    card = {
        "name": f"threshold-{folder.name}", "version": "0.0.1", "task": "phantom thresholding",
        "modality": "synthetic", "labels": {"0": "background", "1": "sphere"},
        "preprocessing": {"spacing_mm": list(spacing), "orientation": "RAS",
                          "intensity": {"method": "none"}},
        "patch_size": list(patch), "methods": ["softmax", "mc_dropout", "ensemble", "tta"],
        "tta_flips": ["LR", "AP", "SI"],  # a pointwise network: invariant to every flip
        "architecture": {"type": "torchscript"} if torchscript else {"type": "monai", "name": "UNet"},
        "members": entries,
    }
    write_card(card, folder)
    return folder


@pytest.fixture
def phantom() -> sitk.Image:
    return sphere_phantom()


@pytest.fixture
def threshold_model(tmp_path) -> Path:
    return write_threshold_model(tmp_path / "threshold_model")


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def mrml_scene(tmp_path):
    """A real MRML scene from slicer-core, set up as Slicer's application does (see slicer_headless)."""
    import slicer_headless

    return slicer_headless.new_scene(tmp_path / "slicer_home")


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """The command line run once on the synthetic head (the module's stand-in input); returns (input file,
    output folder)."""
    import sys

    import slicer
    import slicer_headless
    from SegUncertaintyMRML import process, scenario, volumes

    folder = tmp_path_factory.mktemp("head")
    slicer_headless.new_scene(folder / "home")
    volume, _ = scenario.add_head_volume(slicer.mrmlScene)
    volumes.write_volume(volume, folder / "input.nrrd")
    scenario.run_command(process.segment_command(sys.executable, str(folder / "input.nrrd"), str(folder / "out"),
                                                 method="ensemble"))
    return folder / "input.nrrd", folder / "out"
