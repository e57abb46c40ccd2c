"""One volume end to end: preprocess, streaming inference, maps and scores back on the input grid."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.errors import CancelledError, InputImageError, ModelError, UsageError
from ..core.methods import DEFAULT_METHOD, parse_method, plan_samples
from ..io.images import validate_image
from ..models.loader import LoadedModel, check_mc_dropout
from .engine import EngineConfig, ProgressCallback, check_overlap, class_argmax, run_engine
from .preprocessing import array_on_grid, to_input_space, to_model_space
from .scores import scores_document, subject_scores

MAP_MEANINGS = {
    "entropy": "Normalized predictive entropy H(mean softmax)/ln C, 0-1 (total uncertainty, e-map)",
    "mutual_information": "Mutual information = entropy - expected_entropy, 0-1 (epistemic, model uncertainty)",
    "expected_entropy": "Mean over samples of the normalized entropy, 0-1 (aleatoric, data uncertainty)",
    "variance": "Maximum over classes of the unbiased softmax variance across samples, 0-0.25+ (u-map)",
}


@dataclass
class SegmentationOutputs:
    """Results on the input's exact grid (sitk images) plus the model-grid arrays used for the overview.

    ``probabilities``, ``maps`` and ``model_grid_maps`` are mappings: dicts, or views of files read at each
    lookup (a run with a scratch folder; look up one at a time)."""

    segmentation: sitk.Image
    probabilities: Mapping[str, sitk.Image]
    maps: Mapping[str, sitk.Image]
    scores: dict
    method: str
    n_samples: int
    device: str
    notes: list[str] = field(default_factory=list)
    model_grid_image: sitk.Image | None = None
    model_grid_maps: Mapping[str, np.ndarray] = field(default_factory=dict)
    model_grid_sample_bits: np.ndarray | None = None  # (C-1, ceil(T/8), *S) uint8, bit t%8 of byte t//8
    model_grid_labels: np.ndarray | None = None


def check_method(model: LoadedModel, method: str) -> None:
    """Refuse an unknown method (UsageError), a method the card does not list, or MC dropout on networks
    without (active) dropout (ModelError)."""
    m = parse_method(method)
    if m.dropout and model.card.architecture["type"] == "onnx":
        check_mc_dropout(model, [0])  # refuses with the reason: an ONNX graph has no train-mode dropout
    for part in m.parts:
        if part not in model.card.methods:
            raise ModelError(f"Model '{model.card.name}' does not support '{part}' "
                             f"(its card lists: {', '.join(model.card.methods)})")
    if m.dropout:
        check_mc_dropout(model, range(len(model.networks)) if m.ensemble else [0])


def segment_image(
    image: sitk.Image,
    model: LoadedModel,
    method: str = DEFAULT_METHOD,
    samples: int | None = None,
    overlap: float = 0.5,
    device: str = "auto",
    seed: int = 0,
    max_batch: int = 8,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    scratch: str | Path | None = None,
) -> SegmentationOutputs:
    """Segment a 3D image with uncertainty; every output has ``image``'s geometry.

    The image is validated as the command line does (InputImageError: not 3D, NaN/inf voxels, constant);
    options out of range raise UsageError (a ValueError). ``cancelled`` is polled between stages and
    forward passes (CancelledError). ``scratch``: for whole-volume models (nnU-Net, MONAI bundles), a
    folder where large intermediate data and the output volumes are kept as files (read when looked up;
    the folder must outlive the outputs): the peak memory is then the running sums, not every map at once
    (whole_volume.segment_passes). Card models keep their outputs in memory.
    """
    if not isinstance(image, sitk.Image):
        raise InputImageError(f"segment_image needs a SimpleITK image (with its geometry), got {type(image).__name__}")
    image = validate_image(image, "input image")
    if not isinstance(model, LoadedModel):  # a whole-volume format: models/adapters/base.py
        from .whole_volume import segment_passes

        return segment_passes(image, model, method, samples, device, seed, progress, cancelled, scratch)
    report = progress or (lambda *_: None)
    card = model.card
    check_method(model, method)
    plan = plan_samples(method, len(model.networks), samples, card.flip_axes)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {max_batch!r}")
    window = tuple(reversed(card.patch_size))
    check_overlap(window, overlap)

    def check_cancel() -> None:
        if cancelled is not None and cancelled():
            raise CancelledError("Cancelled by the user; nothing was written")

    report("preprocess", 0.0, "resampling to the model grid")
    array, grid = to_model_space(image, card)
    check_cancel()
    report("preprocess", 1.0, f"model grid {grid.GetSize()} at {card.spacing_mm} mm")
    config = EngineConfig(window=window, overlap=overlap, max_batch=max_batch, device=device, seed=seed)
    result = run_engine(array, model.networks, plan, card.n_classes, config, report, cancelled)
    check_cancel()

    report("postprocess", 0.0, "resampling to the input grid")
    names = card.labels
    probs = [sitk.GetArrayFromImage(to_input_space(result.mean_p[k].numpy(), grid, image, float(k == 0)))
             for k in range(card.n_classes)]
    labels = np.argmax(np.stack(probs), axis=0).astype(np.uint8)
    segmentation = array_on_grid(labels, image)
    probabilities = {names[k]: array_on_grid(probs[k], image) for k in range(1, card.n_classes)}
    map_names = list(MAP_MEANINGS) if result.n_samples > 1 else ["entropy"]
    maps = {name: to_input_space(result.maps[name].numpy(), grid, image) for name in map_names}
    check_cancel()
    report("postprocess", 0.5, "subject-level scores")

    voxel_ml_input = math.prod(image.GetSpacing()) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=card.n_classes)
    prediction = class_argmax(result.mean_p, 0)
    per_class = subject_scores(
        result.sample_bits, result.mean_p, result.maps["expected_entropy"], prediction,
        math.prod(card.spacing_mm) / 1000.0, result.n_samples, names,
        {k: float(counts[k] * voxel_ml_input) for k in range(card.n_classes)},
    )
    report("postprocess", 1.0, "done")
    return SegmentationOutputs(
        segmentation=segmentation, probabilities=probabilities, maps=maps,
        scores=scores_document(per_class, method, result.n_samples, card.info.get("score_reference")), method=method,
        n_samples=result.n_samples, device=result.device, notes=result.notes,
        model_grid_image=array_on_grid(array, grid),
        model_grid_maps={k: v.numpy() for k, v in result.maps.items() if k in map_names},
        model_grid_labels=prediction.to(torch.uint8).numpy(),
        model_grid_sample_bits=result.sample_bits.cpu().numpy(),
    )


def samples_on_input_grid(bits: np.ndarray, n_samples: int, grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """One class's per-sample masks, packed (ceil(T/8), *S) on the model grid, resampled onto the input's
    grid like the probabilities (linear, > 0.5) and packed again: (ceil(T/8), z, y, x) uint8."""
    shape = reference.GetSize()[::-1]
    out = np.zeros((bits.shape[0], *shape), np.uint8)
    for t in range(n_samples):
        mask = ((bits[t // 8] >> (t % 8)) & 1).astype(np.float32)
        on_input = sitk.GetArrayFromImage(to_input_space(mask, grid, reference)) > 0.5
        out[t // 8] |= on_input.astype(np.uint8) << (t % 8)
    return out
