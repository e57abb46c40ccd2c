"""The ending both run paths share: per-pass statistics -> map selection, subject scores, SegmentationOutputs.

The sliding window (card models, on the model grid) and the whole-volume formats (on the input grid) each
reduce their samples to :class:`PassStatistics`; :func:`assemble` turns them into the run's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from ..core.errors import CancelledError
from ..core.progress import ProgressCallback
from ..core.vocabulary import MAP_NAMES
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
    inference: dict | None = None  # the logits' temperature; card models: backend, precision, guard (backends/choice)


@dataclass
class PassStatistics:
    """The samples of one run reduced on the grid the passes ran on, spatial shape S = (z, y, x).

    mean_p: C entries, each (*S) float32 E_t[p_c] (the background's may be None: the scores skip it);
    maps: MAP_NAMES -> (*S) float32; labels: (*S) uint8 argmax of the mean; sample_bits: (C-1, ceil(T/8), *S)
    uint8, bit t % 8 of byte t // 8 set where sample t labels the voxel with that class; voxel_ml: the
    grid's voxel volume in mL.
    """

    mean_p: Sequence[torch.Tensor | None] | torch.Tensor
    maps: dict[str, torch.Tensor]
    labels: torch.Tensor
    sample_bits: torch.Tensor
    n_samples: int
    voxel_ml: float
    device: str
    notes: list[str] = field(default_factory=list)


@dataclass
class PlacedImages:
    """The outputs on the input grid and the arrays the overview reads (made by a run path's ``place``)."""

    segmentation: sitk.Image
    probabilities: Mapping[str, sitk.Image]
    maps: Mapping[str, sitk.Image]
    model_grid_image: sitk.Image
    model_grid_maps: Mapping[str, np.ndarray]
    model_grid_labels: np.ndarray


def shown_maps(n_samples: int) -> list[str]:
    """The maps a run delivers: all of them, or only the entropy from a single sample (the others are 0)."""
    return list(MAP_NAMES) if n_samples > 1 else ["entropy"]


def assemble(stats: PassStatistics, description, method: str,
             place: Callable[[PassStatistics, list[str]], PlacedImages],
             input_volumes_ml: dict[int, float] | None = None, grid: str | None = None,
             progress: ProgressCallback | None = None,
             cancelled: Callable[[], bool] | None = None) -> SegmentationOutputs:
    """Scores from ``stats``, then the images ``place`` makes of them (it may consume ``stats``' tensors).

    description: the model's name, labels {value: name} and info (``score_reference``); input_volumes_ml:
    each class's volume in the delivered labelmap when it differs from the statistics' grid; grid: a note
    on the grid the scores were computed on, added to the scores document. ``cancelled``: polled while the
    scores are computed and before the images are placed (CancelledError).
    """
    report = progress or (lambda *_: None)
    report("postprocess", 0.5, "subject-level scores")
    per_class = subject_scores(stats.sample_bits, stats.mean_p, stats.maps["expected_entropy"], stats.labels,
                               stats.voxel_ml, stats.n_samples, description.labels, input_volumes_ml, cancelled)
    scores = scores_document(per_class, method, stats.n_samples, description.info.get("score_reference"))
    if grid is not None:
        scores["grid"] = grid
    bits = stats.sample_bits.cpu().numpy()
    if cancelled is not None and cancelled():
        raise CancelledError()
    placed = place(stats, shown_maps(stats.n_samples))
    report("postprocess", 1.0, "done")
    return SegmentationOutputs(
        segmentation=placed.segmentation, probabilities=placed.probabilities, maps=placed.maps, scores=scores,
        method=method, n_samples=stats.n_samples, device=stats.device, notes=stats.notes,
        model_grid_image=placed.model_grid_image, model_grid_maps=placed.model_grid_maps,
        model_grid_labels=placed.model_grid_labels, model_grid_sample_bits=bits,
    )
