"""The adapter contract for formats whose samples are whole-volume passes.

A *whole-volume* model (nnU-Net v2 folder, MONAI bundle) produces each sample with its own code, exactly
as its own tool would (its own preprocessing, window, blending and inversion back to the input grid). The
adapter says which passes an uncertainty method needs (``plan``), preprocesses the image once
(``prepare``) and runs one pass (``run_pass``, or ``pass_slabs``: the same pass as pieces, so that a
format can hand it over without ever holding it whole). ``inference.whole_volume.segment_whole_volume`` then
reduces the passes with the one shared accumulator. Card-described networks (MONAI state dicts, TorchScript) keep
using the sliding-window engine directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ...core.methods import SampleSpec
from ..description import ModelDescription


class WholeVolumeModel(ABC):
    """A model whose every sample is a full probability volume on the input's voxel grid."""

    description: ModelDescription
    format: str

    @abstractmethod
    def plan(self, method: str, samples: int | None) -> list[SampleSpec]:
        """The passes for ``method``; ModelError (one line) when this model cannot do it."""

    @abstractmethod
    def prepare(self, image: sitk.Image, device: torch.device, scratch: Path | None = None) -> object:
        """Preprocess ``image`` once for all passes. ``scratch``: a folder where large arrays may wait in
        files between passes (core/spill.py ``spill_if_large``), alive until the last pass is done."""

    @abstractmethod
    def run_pass(self, prepared: object, spec: SampleSpec) -> np.ndarray:
        """One sample: (C, z, y, x) float32 probabilities on ``image``'s voxel grid (array order)."""

    def pass_slabs(self, prepared: object, spec: SampleSpec) -> Iterator[tuple[tuple[slice, ...], object]]:
        """The same sample as (region, (C, *region shape) probabilities) pieces tiling the (z, y, x) grid once;
        a region indexes the leading axes. By default one piece, the whole ``run_pass``."""
        yield (), self.run_pass(prepared, spec)

    def method_notes(self, method: str) -> list[str]:
        """Sentences for the manifest about how this format's method differs from its own tool's."""
        return []

    def describe(self, spec: SampleSpec) -> str:
        """Short progress text for one pass."""
        return f"member {spec.member}" + (f", flip {spec.flip}" if spec.flip else "")
