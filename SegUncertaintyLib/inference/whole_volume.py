"""Segment with a whole-volume model: run its passes one by one and stream them into the accumulator.

Each pass is produced by the format's own code on the input's voxel grid (see models/adapters/base.py);
memory is one pass plus the running moments, never all passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import CancelledError
from .accumulator import MomentAccumulator
from .engine import ProgressCallback, class_argmax, pick_device
from .pipeline import MAP_MEANINGS, SegmentationOutputs
from .preprocessing import array_on_grid
from .scores import scores_document, subject_scores


def segment_passes(
    image: sitk.Image,
    model,
    method: str = "ensemble",
    samples: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> SegmentationOutputs:
    """Segment ``image`` with a WholeVolumeModel; every output lies on ``image``'s grid."""
    report = progress or (lambda *_: None)
    card = model.card
    plan = model.plan(method, samples)
    dev = pick_device(device)
    notes = list(model.method_notes(method))
    if device in ("cuda", "gpu") and dev.type == "cpu":
        notes.append("No CUDA GPU available: ran on the CPU.")
    report("preprocess", 0.0, f"{model.format} preprocessing")
    prepared = model.prepare(image, dev)
    report("preprocess", 1.0, "done")

    shape = tuple(reversed(image.GetSize()))
    accumulator = MomentAccumulator(card.n_classes, shape, len(plan))
    for i, spec in enumerate(plan):
        if cancelled is not None and cancelled():
            raise CancelledError("Cancelled by the user; nothing was written")
        torch.manual_seed(seed + i)  # dropout draws differ per pass and repeat with the seed
        accumulator.add(model.run_pass(prepared, spec))
        report("inference", (i + 1) / len(plan), f"pass {i + 1}/{len(plan)}: {model.describe(spec)}")
    del prepared
    mean_p, maps_t, bits = accumulator.finish()

    report("postprocess", 0.0, "subject-level scores")
    names = card.labels
    n = len(plan)
    labels = class_argmax(mean_p, 0)
    voxel_ml = math.prod(image.GetSpacing()) / 1000.0
    per_class = subject_scores(bits, mean_p, maps_t["entropy"], labels, voxel_ml, n, names)
    scores = scores_document(per_class, method, n, card.info.get("score_reference"))
    scores["grid"] = "input grid (the model's own output grid)"
    map_names = list(MAP_MEANINGS) if n > 1 else ["entropy"]
    maps_np = {name: maps_t[name].numpy() for name in map_names}
    labels_np = labels.numpy()
    report("postprocess", 1.0, "done")
    return SegmentationOutputs(
        segmentation=array_on_grid(labels_np, image),
        probabilities={names[k]: array_on_grid(mean_p[k].numpy(), image) for k in range(1, card.n_classes)},
        maps={name: array_on_grid(array, image) for name, array in maps_np.items()},
        scores=scores, method=method, n_samples=n, device=dev.type, notes=notes,
        model_grid_image=sitk.Cast(image, sitk.sitkFloat32),
        model_grid_maps=maps_np,
        model_grid_labels=labels_np.astype(np.uint8),
        model_grid_sample_bits=bits.numpy(),
    )
