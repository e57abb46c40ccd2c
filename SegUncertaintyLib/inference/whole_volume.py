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
from ..core.methods import DEFAULT_METHOD
from .accumulator import MomentAccumulator, sums_nbytes
from .engine import ProgressCallback, pick_device
from .pipeline import MAP_MEANINGS, SegmentationOutputs
from .preprocessing import array_on_grid
from .scores import scores_document, subject_scores
from .volume_store import VolumeStore


def segment_passes(
    image: sitk.Image,
    model,
    method: str = DEFAULT_METHOD,
    samples: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    scratch: str | Path | None = None,
) -> SegmentationOutputs:
    """Segment ``image`` with a WholeVolumeModel; every output lies on ``image``'s grid.

    ``scratch``: a folder for large intermediate data (running sums and the model's own large arrays while
    they wait, in a sub-folder removed after the passes) and for the outputs: the maps and probabilities
    are then kept there as files, written as they are formed and read when looked up (``StoredImages``),
    so the folder must outlive the returned outputs. Without it the intermediate data waits in a
    temporary folder and the outputs are in memory.
    """
    report = progress or (lambda *_: None)
    card = model.description
    plan = model.plan(method, samples)
    dev = pick_device(device)
    notes = list(model.method_notes(method))
    if device in ("cuda", "gpu") and dev.type == "cpu":
        notes.append("No CUDA GPU available: ran on the CPU.")
    shape = tuple(reversed(image.GetSize()))
    # the passes' intermediate files (inputs, logits, sums) live in a folder removed when the passes are done
    with tempfile.TemporaryDirectory(prefix="seguncertainty-passes-", dir=scratch) as tmp:
        work = Path(tmp)
        report("preprocess", 0.0, f"{model.format} preprocessing")
        prepared = model.prepare(image, dev, work)
        report("preprocess", 1.0, "done")
        large = sums_nbytes(card.n_classes, shape, len(plan)) >= spill.SPILL_BYTES
        accumulator = MomentAccumulator(card.n_classes, shape, len(plan), folder=work if large else None)
        for i, spec in enumerate(plan):
            if cancelled is not None and cancelled():
                raise CancelledError("Cancelled by the user; nothing was written")
            torch.manual_seed(seed + i)  # dropout draws differ per pass and repeat with the seed
            accumulator.add_slabs(model.pass_slabs(prepared, spec))
            report("inference", (i + 1) / len(plan), f"pass {i + 1}/{len(plan)}: {model.describe(spec)}")
        del prepared
        store = VolumeStore(scratch, image) if scratch is not None else None
        mean_p, labels, maps_t, bits = accumulator.finish(store)  # mean_p: the foreground classes'
        del accumulator

    report("postprocess", 0.0, "subject-level scores")
    names = card.labels
    n = len(plan)
    voxel_ml = math.prod(image.GetSpacing()) / 1000.0
    per_class = subject_scores(bits, [None, *mean_p], maps_t["expected_entropy"], labels, voxel_ml, n, names)
    scores = scores_document(per_class, method, n, card.info.get("score_reference"))
    scores["grid"] = "input grid (the model's own output grid)"
    segmentation = array_on_grid(labels.numpy(), image)
    del labels
    map_names = list(MAP_MEANINGS) if n > 1 else ["entropy"]
    foreground = range(1, card.n_classes)
    if store is not None:  # files named by class index: label names come from the model, untrusted
        store.put("expected_entropy", maps_t.pop("expected_entropy").numpy())
        for k in foreground:
            store.put(f"probability_{k}", mean_p.pop(0).numpy())
        maps = store.images({name: name for name in map_names})
        probabilities = store.images({names[k]: f"probability_{k}" for k in foreground})
        grid_maps = maps.arrays
    else:
        # Each output becomes an image (a copy) and its tensor is dropped at once; the model-grid arrays the
        # overview reads are views of those images, not second copies.
        maps = {name: array_on_grid(maps_t.pop(name).numpy(), image) for name in map_names}
        probabilities = {names[k]: array_on_grid(mean_p.pop(0).numpy(), image) for k in foreground}
        grid_maps = {name: image_view(map_image) for name, map_image in maps.items()}
    del maps_t
    report("postprocess", 1.0, "done")
    return SegmentationOutputs(
        segmentation=segmentation, probabilities=probabilities, maps=maps,
        scores=scores, method=method, n_samples=n, device=dev.type, notes=notes,
        model_grid_image=image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32),
        model_grid_maps=grid_maps, model_grid_labels=image_view(segmentation),
        model_grid_sample_bits=bits.numpy(),
    )


class _ImageView(np.ndarray):
    """An ndarray that keeps the SimpleITK image whose buffer it views alive (attribute ``image``)."""


def image_view(image: sitk.Image) -> np.ndarray:
    """Read-only (z, y, x) array view of ``image``'s pixels, valid as long as the array is referenced."""
    view = sitk.GetArrayViewFromImage(image).view(_ImageView)
    view.image = image  # views of ``view`` keep ``view`` as their base (another type: numpy keeps the chain)
    return view
