"""Streaming sliding-window inference with uncertainty.

For every window, the T sampled passes run as batches (at most ``max_batch`` samples per forward pass)
and are reduced at once to that window's E_t[p] and, from the window's own samples, its maps
(maps.uncertainty_maps: entropy H(E_t p), expected entropy, mutual information, variance). E_t[p] and the
maps are blended across overlapping windows with a Gaussian importance weight (sum of w * value, and sum
of w), so entropy = expected entropy + mutual information holds at every voxel. Blending per-sample
probabilities instead would average independent dropout draws in overlap zones and shrink their variance
(seams).

Why MI and variance are blended as maps, not as moments E[p^2], E[H]: each window draws its own
elementwise dropout masks (channel dropout masks are shared by all windows of a sample: models/dropout.py),
so at a voxel the windows' sample means differ; blended moments add that between-window
spread to the variance and, by the concavity of the entropy, to the MI; blended maps stay close to one
pass over the whole volume (Testing/benchmarks/bench_window_blending.py). In overlap zones the entropy
map is therefore the weighted mean of the windows' H(E_t p), at most the entropy of the blended mean
probability (concavity); where one window covers a voxel, the two are equal.

Per-sample segmentations (needed for volume CV, pairwise Dice, GED) are kept as bits: one bit per sample
per foreground class and voxel, taken from the window whose importance weight is highest at that voxel.
Memory: 4 * (C + 5) bytes per voxel for the blended statistics plus (C - 1) * ceil(T / 8) bytes for the
bits, independent of T except for the bits; the naive way needs 4 * T * C bytes per voxel.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.errors import CancelledError, ResourceError, UsageError
from ..core.methods import SampleSpec
from ..core.options import check_overlap_range
from ..core.progress import ProgressCallback
from ..core.vocabulary import MAP_NAMES
from ..models.dropout import (
    SampleMasks,
    only_channel_dropout,
    per_sample_dropout_possible,
    sample_channel_seed,
    sample_seed,
    set_dropout,
)
from .backends.runners import TorchRunner
from .maps import class_argmax, normalized_entropy, uncertainty_maps
from .mc_error import ERROR_NAMES, class_pairs, window_errors
from .tempering import temper_logits

log = logging.getLogger(__name__)


@dataclass
class WindowConfig:
    """Sliding-window settings. ``window`` is (z, y, x) voxels of the model grid."""

    window: tuple[int, int, int]
    overlap: float = 0.5
    max_batch: int = 8
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    temperature: float = 1.0  # every pass's logits are divided by it before the softmax (inference/tempering.py)


@dataclass
class WindowResult:
    """Stitched outputs on the model grid; spatial shape S = (z, y, x).

    mean_p: (C, *S) mean softmax; maps: name -> (*S) float32; sample_bits: (C-1, ceil(T/8), *S) uint8,
    bit t (little-endian within each byte) set where sample t labels the voxel with that class.
    """

    mean_p: torch.Tensor
    maps: dict[str, torch.Tensor]
    sample_bits: torch.Tensor
    n_samples: int
    device: str
    notes: list[str] = field(default_factory=list)
    errors: dict[str, torch.Tensor] | None = None  # mc_error.ERROR_NAMES -> (*S), when samples are random


def pick_device(requested: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU: UsageError (exit 2), never a silent CPU run."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise UsageError("--device cuda: no CUDA GPU is available (use --device auto or cpu)")
    return torch.device("cpu")


def check_overlap(window: Sequence[int], overlap: float) -> None:
    """UsageError unless 0 <= overlap < 1 and the stride leaves more than 1 voxel on every axis."""
    check_overlap_range(overlap)
    strides = [int(w * (1.0 - overlap)) for w in window]
    if any(w > 1 and st <= 1 for w, st in zip(window, strides, strict=True)):
        raise UsageError(f"--overlap {overlap} leaves a stride of {min(strides)} voxel for the window "
                         f"{tuple(window)}: windows would be recomputed thousands of times; use at most "
                         f"{1 - 2 / min(w for w in window if w > 1):.3g}")


def scan_slices(shape: Sequence[int], window: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Window positions covering ``shape`` (each dim >= window), the last flush with the end: per axis the
    starts 0, step, 2 step, ... below ``size - window``, then ``size - window`` (step = window x (1 - overlap),
    at least 1); every combination, the first axis slowest. MONAI's dense_patch_slices, the tests' oracle,
    gives the same list; written here so that a run need not import MONAI (about 1.7 s)."""
    per_axis = []
    for size, w in zip(shape, window, strict=False):
        w = min(w, size)
        step = max(int(w * (1.0 - overlap)), 1) if size > w else w
        per_axis.append([slice(start, start + w) for start in [*range(0, size - w, step), size - w]])
    return list(itertools.product(*per_axis))


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory",
                "failed to allocate memory", "bad_alloc")


def _is_oom(exc: BaseException) -> bool:
    """An allocation failure: torch's (CPU, CUDA), ONNX Runtime's ("Failed to allocate memory", raised as its own
    RuntimeException, not a RuntimeError), OpenVINO's (std::bad_alloc) or numpy's MemoryError."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return any(message in text for message in OOM_MESSAGES)


class _WindowSampler:
    """Runs the sample plan on one window, halving the batch (then leaving the GPU) on out-of-memory.

    Sample t of window w draws its elementwise masks from ``sample_seed(config.seed, w, t)`` and its channel
    masks from (config.seed, t, call) whatever the window and the batch (models/dropout.SampleMasks), so a
    retry with a smaller batch gives the same samples and every window of sample t uses the same channel
    masks. ``runners``: each member's forward pass (backends/runners.py; default: torch, fp16 autocast on
    CUDA if ``config.amp``). ``cancelled`` is polled before every forward pass.
    """

    def __init__(self, networks: Sequence[nn.Module], plan: list[SampleSpec], config: WindowConfig, notes: list[str],
                 cancelled: Callable[[], bool] | None = None, runners: list | None = None):
        self.plan, self.notes, self.cancelled = plan, notes, cancelled
        self.seed = config.seed
        self.device = pick_device(config.device)
        self.batch = max(1, config.max_batch)
        self.runners = runners or [TorchRunner(net, "fp16" if config.amp else "fp32") for net in networks]
        self.temperature = config.temperature
        # member -> its torch network, for the torch runners only: an exported graph takes its dropout masks
        # as inputs (always per sample), and its member's network need not even be built
        self.torch_networks = {i: r.network for i, r in enumerate(self.runners) if isinstance(r, TorchRunner)}
        self.hookable = [per_sample_dropout_possible(self.torch_networks[i]) if i in self.torch_networks else True
                         for i in range(len(self.runners))]
        self.channel_only = [i in self.torch_networks and only_channel_dropout(self.torch_networks[i])
                             for i in range(len(self.runners))]
        self.random = len(plan) > 1 and any(spec.dropout for spec in plan)  # Monte Carlo error is defined
        for net in self.torch_networks.values():
            net.to(self.device)

    def _pass(self, member: int, x: torch.Tensor, specs: list[SampleSpec],
              masks: SampleMasks | None = None) -> torch.Tensor:
        """(S, B, C, *w) softmax of the S passes ``specs`` over the B windows ``x`` (B, 1, *w), in one batch;
        ``masks``: the dropout masks of the S * B batch elements (None: dropout as the network is set)."""
        batch = torch.cat([torch.flip(x, [d + 2 for d in s.flip]) if s.flip else x for s in specs])
        logits = self.runners[member](batch, masks).to(x.device)
        logits = logits.view(len(specs), x.shape[0], *logits.shape[1:])
        logits = torch.stack([torch.flip(logits[i], [d + 2 for d in s.flip]) if s.flip else logits[i]
                              for i, s in enumerate(specs)])
        return torch.softmax(self.logit_step(logits), dim=2)

    def logit_step(self, logits: torch.Tensor) -> torch.Tensor:
        """The step between the network's (S, B, C, *w) logits and the softmax: the temperature."""
        return temper_logits(logits, self.temperature)

    def _forward(self, x: torch.Tensor, specs: list[SampleSpec], window: int, samples: range) -> torch.Tensor:
        """(S, B, C, *w) softmax of the samples ``specs`` (plan indices ``samples``) on the B windows ``x`` from
        number ``window`` on (B > 1 only without dropout: the masks are drawn per window)."""
        member = specs[0].member
        if member in self.torch_networks:
            set_dropout(self.torch_networks[member], specs[0].dropout)
        if not specs[0].dropout:
            return self._pass(member, x, specs)
        if self.hookable[member]:
            return self._pass(member, x, specs, SampleMasks(self.seed, window, samples, self.device))
        # dropout the hooks cannot reach (TorchScript): one sample per pass, global generator seeded per sample;
        # channel-only dropout draws (N, C, 1, ...) masks, so a seed without the window shares them across windows.
        # Mixed elementwise and channel TorchScript dropout keeps per-window channel masks (a known limit).
        if self.channel_only[member]:
            seeds = [sample_channel_seed(self.seed, t) for t in samples]
        else:
            seeds = [sample_seed(self.seed, window, t) for t in samples]
        out = []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        for spec, seed in zip(specs, seeds, strict=True):
            self._check_cancel()
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out.append(self._pass(member, x, [spec]))
        return torch.cat(out)

    def _check_cancel(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise CancelledError()

    def _chunks(self):
        """Consecutive runs of the plan sharing member and dropout, cut at the current batch size."""
        start = 0
        while start < len(self.plan):
            first = self.plan[start]
            stop = start + 1
            while (stop < len(self.plan) and stop - start < self.batch
                   and (self.plan[stop].member, self.plan[stop].dropout) == (first.member, first.dropout)):
                stop += 1
            yield start, stop
            start = stop

    def windows_per_pass(self) -> int:
        """Windows one forward pass may hold: without dropout (one sample per window and pass: softmax, each
        ensemble member, each TTA flip) batch size // the longest run of the plan sharing a pass; else 1."""
        if any(spec.dropout for spec in self.plan):
            return 1
        return max(1, self.batch // max(stop - start for start, stop in self._chunks()))

    def run(self, window: torch.Tensor, index: int, n_classes: int):
        """For one (1, 1, *w) window (number ``index``): sums over samples of p, p^2 and normalized H(p),
        the samples' labels packed as bits, (C-1, ceil(T/8), *w) uint8, and when the samples are random the
        sums of p_k p_l for mc_error.class_pairs (P, *w) (else None)."""
        return self.run_windows(window, index, n_classes)[0]

    def run_windows(self, windows: torch.Tensor, index: int, n_classes: int) -> list[tuple]:
        """:meth:`run` for B windows ``windows`` (B, 1, *w), numbers ``index`` to ``index + B - 1``, in shared
        forward passes; one tuple per window. Out of memory with several windows: one window at a time."""
        x = windows.to(self.device)
        while True:
            try:
                sums = self._run(x, index, n_classes)
                return [tuple(None if v is None else v[b] for v in sums) for b in range(x.shape[0])]
            except Exception as exc:  # the exported backends' runtimes raise their own exception types
                if not _is_oom(exc):
                    raise
                if x.shape[0] > 1:
                    return [r for b in range(x.shape[0]) for r in self.run_windows(x[b:b + 1], index + b, n_classes)]
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.batch > 1:
                    self.batch //= 2
                    self.notes.append(f"Out of memory: retrying with {self.batch} sample(s) per pass.")
                elif self.device.type == "cuda":
                    self.notes.append("Out of GPU memory even with 1 sample per pass: continuing on the CPU.")
                    self.device = torch.device("cpu")
                    for net in self.torch_networks.values():
                        net.to(self.device)
                    x = x.cpu()
                else:
                    raise ResourceError("Out of memory even with one sample per pass; use a smaller window "
                                        "(patch size) or a machine with more memory") from exc
                log.warning(self.notes[-1])

    @torch.no_grad()
    def _run(self, x: torch.Tensor, index: int, n_classes: int):
        """The sums of :meth:`run` with a leading window axis (B, ...)."""
        sum_p = sum_p2 = sum_h = sum_pp = None
        bits = torch.zeros((x.shape[0], n_classes - 1, (len(self.plan) + 7) // 8, *x.shape[2:]), dtype=torch.uint8,
                           device=x.device)
        for start, stop in self._chunks():
            self._check_cancel()
            p = self._forward(x, self.plan[start:stop], index, range(start, stop))  # (S, B, C, *w)
            h = normalized_entropy(p, 2)
            labels = class_argmax(p, 2)
            if sum_p is None:
                sum_p, sum_p2, sum_h = (torch.zeros_like(p[0]), torch.zeros_like(p[0]), torch.zeros_like(h[0]))
                pairs = class_pairs(n_classes) if self.random else []
                if pairs:
                    sum_pp = torch.zeros((p.shape[1], len(pairs), *p.shape[3:]), dtype=p.dtype, device=p.device)
            for j, t in enumerate(range(start, stop)):  # sample by sample: the same sums whatever the batch
                sum_p += p[j]
                sum_p2 += p[j] * p[j]
                sum_h += h[j]
                for i, (k, l) in enumerate(pairs):  # noqa: E741
                    sum_pp[:, i].addcmul_(p[j][:, k], p[j][:, l])
                for k in range(1, n_classes):  # packed at once: no (T, *w) label stack
                    bits[:, k - 1, t // 8] |= (labels[j] == k).to(torch.uint8) << (t % 8)
        return sum_p, sum_p2, sum_h, bits, sum_pp


def padded_volume(volume: np.ndarray, window: Sequence[int]) -> torch.Tensor:
    """(1, 1, *padded) float32: the (z, y, x) volume padded with its minimum up to the window where smaller."""
    shape = tuple(volume.shape)
    padded_shape = tuple(max(s, w) for s, w in zip(shape, window, strict=False))
    image = torch.zeros((1, 1, *padded_shape), dtype=torch.float32)
    image[..., :shape[0], :shape[1], :shape[2]] = torch.from_numpy(np.ascontiguousarray(volume))
    if padded_shape != shape:  # pad with the background value
        fill = float(volume.min())
        image[..., shape[0]:, :, :] = fill
        image[..., :, shape[1]:, :] = fill
        image[..., :, :, shape[2]:] = fill
    return image


def window_weight(window: Sequence[int]) -> torch.Tensor:
    """(*w) Gaussian importance weight of the blending: the product over the axes of exp(-x^2 / (2 sigma^2)),
    x the distance from the window's centre in voxels and sigma = w / 8, floored at 1e-3 (MONAI's
    compute_importance_map, gaussian, sigma_scale 0.125: equal to it, the tests' oracle)."""
    weight = None
    for w in window:
        x = torch.arange(start=-(w - 1) / 2.0, end=(w - 1) / 2.0 + 1, dtype=torch.float)
        axis = torch.exp(x**2 / (-2 * (w * 0.125) ** 2))
        weight = axis if weight is None else weight.unsqueeze(-1) * axis
    return weight.clamp(min=max(float(weight.min()), 1e-3))


def run_sliding_window(
    volume: np.ndarray,
    networks: Sequence[nn.Module],
    plan: list[SampleSpec],
    n_classes: int,
    config: WindowConfig,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    runners: list | None = None,
) -> WindowResult:
    """Segment a preprocessed (z, y, x) float32 volume; return stitched mean, maps and sample bits.

    ``cancelled`` is polled before every forward pass (CancelledError); the result does not depend on
    ``config.max_batch`` (each sample's randomness comes from the seed, window and sample index).
    ``runners``: each member's forward pass (backends/runners.py; default: torch).
    """
    check_overlap(config.window, config.overlap)
    notes: list[str] = []
    sampler = _WindowSampler(networks, plan, config, notes, cancelled, runners)
    n_samples, shape = len(plan), tuple(volume.shape)
    window = tuple(int(w) for w in config.window)
    padded_shape = tuple(max(s, w) for s, w in zip(shape, window, strict=False))
    image = padded_volume(volume, window)

    c, n_bytes = n_classes, (n_samples + 7) // 8
    sum_p = torch.zeros((c, *padded_shape))
    blended = {name: torch.zeros(padded_shape) for name in MAP_NAMES}
    sum_w = torch.zeros(padded_shape)
    best_w = torch.zeros(padded_shape)
    bits = torch.zeros((c - 1, n_bytes, *padded_shape), dtype=torch.uint8)
    errors = {name: torch.zeros(padded_shape) for name in ERROR_NAMES} if sampler.random else None
    weight = window_weight(window)

    slices = scan_slices(padded_shape, window, config.overlap)
    inv_t = 1.0 / n_samples
    group, results = sampler.windows_per_pass(), []
    for i, sl in enumerate(slices):
        if cancelled is not None and cancelled():
            raise CancelledError()
        if not results:  # the next group of windows, in shared forward passes
            batch = slices[i:i + group]
            results = sampler.run_windows(torch.cat([image[(slice(None), slice(None), *b)] for b in batch]), i, c)
        s_p, s_p2, s_h, packed, s_pp = results.pop(0)
        mean_p = s_p.cpu() * inv_t
        own = uncertainty_maps(mean_p, s_p2.cpu() * inv_t, s_h.cpu() * inv_t, n_samples)  # this window's samples
        sum_p[(slice(None), *sl)] += weight * mean_p
        for name, total in blended.items():
            total[sl] += weight * own[name]
        if errors is not None:
            for name, error in window_errors(mean_p, s_p2.cpu() * inv_t, s_pp.cpu() * inv_t, n_samples).items():
                errors[name][sl] += weight * error
        sum_w[sl] += weight
        wins = weight > best_w[sl]
        best_w[sl] = torch.maximum(best_w[sl], weight)
        region = bits[(slice(None), slice(None), *sl)]
        region.copy_(torch.where(wins, packed.cpu(), region))
        if progress is not None:
            progress("inference", (i + 1) / len(slices), f"window {i + 1}/{len(slices)}")
    del best_w, image

    crop = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    mean_p = sum_p.div_(sum_w)[(slice(None), *crop)].contiguous()
    maps = {name: total.div_(sum_w)[crop].contiguous() for name, total in blended.items()}
    if errors is not None:
        errors = {name: total.div_(sum_w)[crop].contiguous() for name, total in errors.items()}
    del sum_w
    return WindowResult(mean_p, maps, bits[(slice(None), slice(None), *crop)].contiguous(), n_samples,
                        sampler.device.type, notes, errors)

