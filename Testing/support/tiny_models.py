"""Tiny networks with MC dropout and a writer of a card model folder around them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from SegUncertaintyLib.models.card import write_card


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
