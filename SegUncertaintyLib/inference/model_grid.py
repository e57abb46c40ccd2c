"""Card models: the input resampled onto the model's grid, the sliding window there, the results back.

The card gives the grid (spacing, orientation), the intensity normalization, the window (patch size) and
the flip axes of test-time augmentation; the outputs are resampled onto the input's exact grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..core.errors import CancelledError, ModelError
from ..core.methods import parse_method, plan_samples
from ..core.options import SegmentOptions
from ..core.progress import ProgressCallback
from ..models.loader import LoadedModel, check_mc_dropout
from .assembly import PassStatistics, PlacedImages, SegmentationOutputs, assemble
from .backends.choice import choose_backend, make_runners
from .budget import check_run_memory
from .maps import class_argmax, first_max_index
from .mc_error import DEFINITION, error_percentiles, foreground_box, sample_in_rounds
from .preprocessing import array_on_grid, to_input_space, to_model_space
from .sliding_window import WindowConfig, WindowResult, check_overlap, pick_device, run_sliding_window

FIRST_ROUND = 10  # --tolerance: samples of the first round (at most --samples)


def check_method(model: LoadedModel, method: str) -> None:
    """Refuse an unknown method (UsageError), a method the card does not list, or MC dropout on networks
    without (active) dropout (ModelError)."""
    description, parsed = model.description, parse_method(method)
    if parsed.dropout and model.card.architecture["type"] == "onnx":
        check_mc_dropout(model, [0])  # refuses with the reason: an ONNX graph has no train-mode dropout
    for part in parsed.parts:
        if part not in description.methods:
            raise ModelError(f"Model '{description.name}' does not support '{part}' "
                             f"(its card lists: {', '.join(description.methods)})")
    if parsed.dropout:
        check_mc_dropout(model, range(len(model.networks)) if parsed.ensemble else [0])


def segment_on_model_grid(image: sitk.Image, model: LoadedModel, options: SegmentOptions,
                          report: ProgressCallback, cancelled: Callable[[], bool] | None) -> SegmentationOutputs:
    """Segment a validated ``image`` with a card model; every output has ``image``'s geometry."""
    card, description = model.card, model.description
    check_method(model, options.method)
    plan = plan_samples(options.method, len(model.networks), options.samples, card.flip_axes)
    window = tuple(reversed(card.patch_size))
    check_overlap(window, options.overlap)

    def check_cancel() -> None:
        if cancelled is not None and cancelled():
            raise CancelledError()

    report("preprocess", 0.0, "resampling to the model grid")
    array, grid = to_model_space(image, card)
    check_run_memory(math.prod(array.shape), description.n_classes, len(plan))
    check_cancel()
    report("preprocess", 1.0, f"model grid {grid.GetSize()} at {card.spacing_mm} mm")
    choice = choose_backend(model, options, pick_device(options.device))
    runners = make_runners(model, choice)
    config = WindowConfig(window=window, overlap=options.overlap, max_batch=options.max_batch,
                          device=options.device if choice.backend == "torch" else "cpu", seed=options.seed,
                          temperature=options.temperature)
    spacing_zyx = tuple(reversed(card.spacing_mm))

    def sample(n: int) -> tuple[WindowResult, float]:
        passes = plan if n == len(plan) // members_sampled else plan_samples(options.method, len(model.networks), n,
                                                                              card.flip_axes)
        result = run_sliding_window(array, model.networks, passes, description.n_classes, config, report, cancelled,
                                    runners)
        error = mc_error(result, spacing_zyx)
        return result, max(error.values()) if error else 0.0

    members_sampled = len(model.networks) if parse_method(options.method).ensemble else 1
    rounds = None
    if options.tolerance is None:
        result, _ = sample(len(plan) // members_sampled)
    else:
        per_member = len(plan) // members_sampled
        result, rounds = sample_in_rounds(sample, FIRST_ROUND, per_member, options.tolerance)
    check_cancel()

    report("postprocess", 0.0, "resampling to the input grid")
    n_classes, names = description.n_classes, description.labels
    # the resampled images are the delivered probabilities: read through views, never copied
    probs = [to_input_space(result.mean_p[k].numpy(), grid, image, float(k == 0)) for k in range(n_classes)]
    labels = first_max_index([sitk.GetArrayViewFromImage(p) for p in probs])
    voxel_ml_input = math.prod(image.GetSpacing()) / 1000.0
    foreground = [int(np.count_nonzero(labels == k)) for k in range(1, n_classes)]  # bincount: an 8-byte copy
    counts = [labels.size - sum(foreground), *foreground]
    check_cancel()

    def place(stats: PassStatistics, map_names: list[str]) -> PlacedImages:
        return PlacedImages(
            segmentation=array_on_grid(labels, image),
            probabilities={names[k]: probs[k] for k in range(1, n_classes)},
            maps={name: (check_cancel(), to_input_space(stats.maps[name].numpy(), grid, image))[1]
                  for name in map_names},  # each resampling takes seconds on a large CT: a cancel between them
            model_grid_image=array_on_grid(array, grid),
            model_grid_maps={name: stats.maps[name].numpy() for name in map_names},
            model_grid_labels=stats.labels.to(torch.uint8).numpy(),
        )

    stats = PassStatistics(mean_p=result.mean_p, maps=result.maps, labels=class_argmax(result.mean_p, 0),
                           sample_bits=result.sample_bits, n_samples=result.n_samples,
                           voxel_ml=math.prod(card.spacing_mm) / 1000.0, device=result.device, notes=result.notes)
    outputs = assemble(stats, description, options.method, place,
                       input_volumes_ml={k: float(counts[k] * voxel_ml_input) for k in range(n_classes)},
                       progress=report, cancelled=cancelled)
    outputs.inference = choice.record()
    error = mc_error(result, spacing_zyx)
    if error is not None:
        outputs.scores["monte_carlo_error"] = {
            **error, "n_samples": result.n_samples, "definition": DEFINITION,
            **({"tolerance": options.tolerance, "rounds": rounds} if rounds is not None else {})}
    return outputs


def mc_error(result: WindowResult, spacing_zyx: tuple[float, float, float]) -> dict[str, float] | None:
    """The run's Monte Carlo error (mc_error.error_percentiles) on the model grid; None without random samples."""
    if result.errors is None:
        return None
    return error_percentiles(result.errors, foreground_box(class_argmax(result.mean_p, 0).numpy(), spacing_zyx))


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
