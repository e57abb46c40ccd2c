"""Segment with a whole-volume model: run its passes one by one and stream them into the accumulator.

Each pass is produced by the format's own code on the input's voxel grid (see models/adapters/base.py);
memory is one pass plus the running moments, never all passes. Large running moments wait in a
temporary file while a pass's forward computation runs (MomentAccumulator.add_slabs, ``spill_dir``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import CancelledError
from .accumulator import MomentAccumulator
from .engine import ProgressCallback, pick_device
from .pipeline import MAP_MEANINGS, SegmentationOutputs
from .preprocessing import array_on_grid
from .scores import scores_document, subject_scores

# Running sums at least this large wait in a temporary file while each pass is computed (its forward pass
# and the sums are then never in memory together): a CT of 512 x 512 x 300 with 3 classes has 1.5 GB of sums.
SPILL_BYTES = 256 << 20


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
    with tempfile.TemporaryDirectory(prefix="seguncertainty-") as tmp:
        spill = tmp if accumulator.nbytes >= SPILL_BYTES else None
        for i, spec in enumerate(plan):
            if cancelled is not None and cancelled():
                raise CancelledError("Cancelled by the user; nothing was written")
            torch.manual_seed(seed + i)  # dropout draws differ per pass and repeat with the seed
            accumulator.add_slabs(model.pass_slabs(prepared, spec), spill_dir=spill)
            report("inference", (i + 1) / len(plan), f"pass {i + 1}/{len(plan)}: {model.describe(spec)}")
    del prepared
    mean_p, labels, maps_t, bits = accumulator.finish()  # mean_p: the foreground classes'
    del accumulator

    report("postprocess", 0.0, "subject-level scores")
    names = card.labels
    n = len(plan)
    voxel_ml = math.prod(image.GetSpacing()) / 1000.0
    per_class = subject_scores(bits, [None, *mean_p], maps_t["expected_entropy"], labels, voxel_ml, n, names)
    scores = scores_document(per_class, method, n, card.info.get("score_reference"))
    scores["grid"] = "input grid (the model's own output grid)"
    # Each output becomes an image (a copy) and its tensor is dropped at once; the model-grid arrays the
    # overview reads are views of those images, not second copies.
    segmentation = array_on_grid(labels.numpy(), image)
    del labels
    map_names = list(MAP_MEANINGS) if n > 1 else ["entropy"]
    maps = {name: array_on_grid(maps_t.pop(name).numpy(), image) for name in map_names}
    del maps_t
    probabilities = {}
    for k in range(1, card.n_classes):
        probabilities[names[k]] = array_on_grid(mean_p[0].numpy(), image)
        del mean_p[0]
    report("postprocess", 1.0, "done")
    return SegmentationOutputs(
        segmentation=segmentation, probabilities=probabilities, maps=maps,
        scores=scores, method=method, n_samples=n, device=dev.type, notes=notes,
        model_grid_image=image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32),
        model_grid_maps={name: image_view(map_image) for name, map_image in maps.items()},
        model_grid_labels=image_view(segmentation),
        model_grid_sample_bits=bits.numpy(),
    )


class _ImageView(np.ndarray):
    """An ndarray that keeps the SimpleITK image whose buffer it views alive (attribute ``image``)."""


def image_view(image: sitk.Image) -> np.ndarray:
    """Read-only (z, y, x) array view of ``image``'s pixels, valid as long as the array is referenced."""
    view = sitk.GetArrayViewFromImage(image).view(_ImageView)
    view.image = image  # views of ``view`` keep ``view`` as their base (another type: numpy keeps the chain)
    return view
