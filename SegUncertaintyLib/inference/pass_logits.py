"""Every pass's logits at chosen voxels, for fitting a temperature (calibration/temperature.py).

The passes are the run's own: the same plan, seeds and dropout masks as ``segment_image`` with the same
options (and t = 1), so a case folder and its collected logits describe the same samples.

- Card models, on the model grid: the voxels (and the reference labels) are mapped there by nearest
  neighbour. A voxel's logits are those of the window whose blending weight is highest there (the rule of
  the per-sample bits, sliding_window.py); in overlap zones the run itself blends the windows'
  probabilities, so there the collected samples are one window's, not the blend. Windows that hold no
  chosen voxel are not run.
- Whole-volume formats, on the input grid: their passes are probabilities, so the log-probabilities
  ln p (>= ln of float32's smallest normal, -87.3) are collected; softmax(ln p / t) = softmax(z / t)
  (inference/tempering.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core.errors import CancelledError
from ..core.methods import plan_samples
from ..core.options import SegmentOptions
from ..models.loader import LoadedModel
from .backends.choice import choose_backend, make_runners
from .model_grid import check_method
from .preprocessing import array_on_grid, resample_like, to_model_space
from .sliding_window import (
    WindowConfig,
    _WindowSampler,
    check_overlap,
    padded_volume,
    pick_device,
    scan_slices,
    window_weight,
)
from .whole_volume import pass_seed

LOG_FLOOR = float(np.log(np.finfo(np.float32).tiny))  # ln p of a probability that underflowed


@dataclass
class PassLogits:
    """``logits`` (T, C, N) float16, ``labels`` (N,) uint8 reference classes, ``voxels`` (N,) flat (z, y, x)
    indices on the grid they were taken on, ``grid`` "model" (card models) or "input", ``kind`` "logits" or
    "log-probabilities"."""

    logits: np.ndarray
    labels: np.ndarray
    voxels: np.ndarray
    grid: str
    kind: str


def choose_voxels(region: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Flat indices of ``region``'s voxels: all of them, or ``cap`` drawn uniformly without replacement
    (seeded), in increasing order."""
    index = np.flatnonzero(region)
    if index.size > cap:
        index = np.sort(np.random.default_rng(seed).choice(index, cap, replace=False))
    return index


def collect_pass_logits(image: sitk.Image, model, options: SegmentOptions, region: np.ndarray,
                        reference: np.ndarray, cap: int, cancelled: Callable[[], bool] | None = None) -> PassLogits:
    """Per-pass logits of ``model`` run on ``image`` with ``options`` at up to ``cap`` voxels of ``region``
    ((z, y, x) bool on the input grid) and ``reference``'s labels there ((z, y, x) class values)."""
    if isinstance(model, LoadedModel):
        return _card_logits(image, model, options, region, reference, cap, cancelled)
    return _whole_volume_logits(image, model, options, region, reference, cap, cancelled)


def _on_grid(array: np.ndarray, image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A label array on ``image``'s grid moved onto ``grid`` by nearest neighbour."""
    moved = resample_like(array_on_grid(array.astype(np.uint8), image), grid, linear=False)
    return sitk.GetArrayFromImage(moved)


def _card_logits(image, model: LoadedModel, options, region, reference, cap, cancelled) -> PassLogits:
    card = model.card
    check_method(model, options.method)
    plan = plan_samples(options.method, len(model.networks), options.samples, card.flip_axes)
    window = tuple(int(w) for w in reversed(card.patch_size))
    check_overlap(window, options.overlap)
    array, grid = to_model_space(image, card)
    chosen = choose_voxels(_on_grid(region, image, grid) != 0, cap, options.seed)
    labels = _on_grid(reference, image, grid).ravel()[chosen]
    coords = np.stack(np.unravel_index(chosen, array.shape), axis=1)  # (N, 3)
    volume = padded_volume(array, window)
    slices = scan_slices(volume.shape[2:], window, options.overlap)
    weight = window_weight(window).numpy()
    owner, best = np.full(len(chosen), -1), np.zeros(len(chosen))
    for i, sl in enumerate(slices):  # the highest weight wins, the first window on ties (as the run's bits)
        start = np.array([s.start for s in sl])
        local = coords - start
        inside = np.all((local >= 0) & (local < np.array(window)), axis=1)
        w = np.zeros(len(chosen))
        w[inside] = weight[tuple(local[inside].T)]
        wins = w > best
        owner[wins], best[wins] = i, w[wins]
    choice = choose_backend(model, options, pick_device(options.device))  # the run's backend and precision
    config = WindowConfig(window=window, overlap=options.overlap, max_batch=options.max_batch,
                          device=options.device if choice.backend == "torch" else "cpu", seed=options.seed)
    sampler = _RecordingSampler(model.networks, plan, config, [], cancelled, make_runners(model, choice))
    out = np.zeros((len(plan), model.description.n_classes, len(chosen)), np.float16)
    for i in np.unique(owner[owner >= 0]):
        sl = slices[i]
        logits = sampler.window_logits(volume[(slice(None), slice(None), *sl)], int(i))  # (T, C, *w)
        mine = np.flatnonzero(owner == i)
        local = coords[mine] - np.array([s.start for s in sl])
        out[:, :, mine] = logits[(slice(None), slice(None), *local.T)].numpy().astype(np.float16)
    return PassLogits(out, labels.astype(np.uint8), chosen, "model", "logits")


class _RecordingSampler(_WindowSampler):
    """The run's sampler, keeping each pass's logits at the temperature step (t = 1: nothing changed)."""

    def logit_step(self, logits: torch.Tensor) -> torch.Tensor:
        self.recorded.append(logits.cpu())
        return logits

    @torch.no_grad()
    def window_logits(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """(T, C, *w) logits of the plan's passes on one (1, 1, *w) window number ``index``."""
        self.recorded: list[torch.Tensor] = []
        x = x.to(self.device)
        for start, stop in self._chunks():
            self._check_cancel()
            self._forward(x, self.plan[start:stop], index, range(start, stop))
        return torch.cat(self.recorded)[:, 0]


def _whole_volume_logits(image, model, options, region, reference, cap, cancelled) -> PassLogits:
    plan = model.plan(options.method, options.samples)
    chosen = choose_voxels(region, cap, options.seed)
    shape = region.shape
    coords = np.stack(np.unravel_index(chosen, shape), axis=1)
    out = np.zeros((len(plan), model.description.n_classes, len(chosen)), np.float16)
    prepared = model.prepare(image, pick_device(options.device), None)
    for i, spec in enumerate(plan):
        if cancelled is not None and cancelled():
            raise CancelledError()
        torch.manual_seed(pass_seed(options.seed, i))
        for piece, p in model.pass_slabs(prepared, spec):
            start = np.array([s.start or 0 for s in piece] + [0] * (3 - len(piece)))
            stop = np.array([shape[a] if a >= len(piece) or piece[a].stop is None else piece[a].stop
                             for a in range(3)])
            inside = np.flatnonzero(np.all((coords >= start) & (coords < stop), axis=1))
            values = torch.as_tensor(p)[(slice(None), *(coords[inside] - start).T)].double()
            out[i][:, inside] = torch.log(values).clamp_min(LOG_FLOOR).numpy().astype(np.float16)
    return PassLogits(out, reference.ravel()[chosen].astype(np.uint8), chosen, "input", "log-probabilities")
