"""Segment with a whole-volume model: run its passes one by one and stream them into the accumulator.

Each pass is produced by the format's own code on the input's voxel grid (see models/adapters/base.py);
memory is one pass plus the running moments, never all passes. Large running moments live in files,
updated region by region as a pass arrives (MomentAccumulator's ``folder``); with a ``scratch`` folder
the outputs are kept there as files too (inference/volume_store.py).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core import spill
from ..core.errors import CancelledError
from ..core.options import SegmentOptions
from ..core.progress import ProgressCallback
from .accumulator import MomentAccumulator, sums_nbytes
from .assembly import PassStatistics, PlacedImages, SegmentationOutputs, assemble
from .budget import check_run_memory
from .preprocessing import array_on_grid
from .sliding_window import pick_device
from .tempering import tempered_slabs
from .volume_store import VolumeStore


def pass_seed(seed: int, index: int) -> int:
    """The torch seed set before pass ``index``: dropout draws differ per pass and repeat with the seed."""
    return seed + index


def segment_whole_volume(image: sitk.Image, model, options: SegmentOptions, report: ProgressCallback,
                         cancelled: Callable[[], bool] | None = None,
                         scratch: str | Path | None = None) -> SegmentationOutputs:
    """Segment a validated ``image`` with a WholeVolumeModel; every output lies on ``image``'s grid.

    ``scratch``: a folder for large intermediate data (running sums and the model's own large arrays while
    they wait, in a sub-folder removed after the passes) and for the outputs: the maps and probabilities
    are then kept there as files, written as they are formed and read when looked up (``StoredImages``),
    so the folder must outlive the returned outputs. Without it the intermediate data waits in a
    temporary folder and the outputs are in memory.
    """
    description = model.description
    n_classes = description.n_classes
    plan = model.plan(options.method, options.samples)
    dev = pick_device(options.device)
    notes = [*model.method_notes(options.method)]
    shape = tuple(reversed(image.GetSize()))
    large = sums_nbytes(n_classes, shape, len(plan)) >= spill.SPILL_BYTES
    check_run_memory(math.prod(shape), n_classes, len(plan), sums_in_memory=not large)
    # the passes' intermediate files (inputs, logits, sums) live in a folder removed when the passes are done
    with tempfile.TemporaryDirectory(prefix="seguncertainty-passes-", dir=scratch) as tmp:
        work = Path(tmp)
        report("preprocess", 0.0, f"{model.format} preprocessing")
        prepared = model.prepare(image, dev, work)
        report("preprocess", 1.0, "done")
        accumulator = MomentAccumulator(n_classes, shape, len(plan), folder=work if large else None)
        for i, spec in enumerate(plan):
            if cancelled is not None and cancelled():
                raise CancelledError()
            torch.manual_seed(pass_seed(options.seed, i))
            accumulator.add_slabs(tempered_slabs(model.pass_slabs(prepared, spec), options.temperature))
            report("inference", (i + 1) / len(plan), f"pass {i + 1}/{len(plan)}: {model.describe(spec)}")
        del prepared
        store = VolumeStore(scratch, image) if scratch is not None else None
        mean_p, labels, maps_t, bits = accumulator.finish(store)  # mean_p: the foreground classes'
        del accumulator

    names = description.labels
    foreground = range(1, n_classes)

    def place(stats: PassStatistics, map_names: list[str]) -> PlacedImages:
        """Each output becomes an image (or a file of ``store``) and its tensor is dropped at once."""
        segmentation = array_on_grid(stats.labels.numpy(), image)
        stats.labels = None
        maps_t, fg_p = stats.maps, stats.mean_p
        stats.maps, stats.mean_p = {}, []
        fg_p.pop(0)  # the background's entry (None)
        if store is not None:  # files named by class index: label names come from the model, untrusted
            store.put("expected_entropy", maps_t.pop("expected_entropy").numpy())
            for k in foreground:
                store.put(f"probability_{k}", fg_p.pop(0).numpy())
            maps = store.images({name: name for name in map_names})
            probabilities = store.images({names[k]: f"probability_{k}" for k in foreground})
            grid_maps = maps.arrays
        else:
            # the model-grid arrays the overview reads are views of the images, not second copies
            maps = {name: array_on_grid(maps_t.pop(name).numpy(), image) for name in map_names}
            probabilities = {names[k]: array_on_grid(fg_p.pop(0).numpy(), image) for k in foreground}
            grid_maps = {name: image_view(map_image) for name, map_image in maps.items()}
        float_image = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
        return PlacedImages(segmentation=segmentation, probabilities=probabilities, maps=maps,
                            model_grid_image=float_image, model_grid_maps=grid_maps,
                            model_grid_labels=image_view(segmentation))

    stats = PassStatistics(mean_p=[None, *mean_p], maps=maps_t, labels=labels, sample_bits=bits,
                           n_samples=len(plan), voxel_ml=math.prod(image.GetSpacing()) / 1000.0,
                           device=dev.type, notes=notes)
    del mean_p, labels, maps_t
    report("postprocess", 0.0, "subject-level scores")
    return assemble(stats, description, options.method, place, grid="input grid (the model's own output grid)",
                    progress=report, cancelled=cancelled)


class _ImageView(np.ndarray):
    """An ndarray that keeps the SimpleITK image whose buffer it views alive (attribute ``image``)."""


def image_view(image: sitk.Image) -> np.ndarray:
    """Read-only (z, y, x) array view of ``image``'s pixels, valid as long as the array is referenced."""
    view = sitk.GetArrayViewFromImage(image).view(_ImageView)
    view.image = image  # views of ``view`` keep ``view`` as their base (another type: numpy keeps the chain)
    return view
