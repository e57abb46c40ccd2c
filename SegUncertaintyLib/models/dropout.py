"""Dropout control of a network: only the dropout modules in train mode, and per-sample masks.

Randomness, so that one sample is one network draw over the whole volume and a result never depends on
which samples share a forward pass (``--max-batch`` and the out-of-memory fallback cannot change the maps):

- elementwise dropout (nn.Dropout): the mask of the j-th elementwise call of sample t in window w comes
  from a counter-based Philox4x32-10 stream keyed by (``sample_seed(seed, w, t)``, j) (:class:`SampleMasks`).
  Its masks have the window's shape, so windows cannot share them; independent draws per window give the
  same per-voxel distribution as one whole-volume pass.
- channel dropout (nn.Dropout1d/2d/3d, MONAI's spatial dropout): the mask of the j-th channel-dropout call
  of sample t has shape (channels,) and is drawn from ``channel_seed(seed, t, j)``, whatever the window,
  so every window of sample t drops the same channels, as one pass over the whole volume would. (Drawn per
  window, one sample would be a patchwork of networks and the volume spread would shrink about tenfold.)

The masks are drawn on the CPU whatever the device and the backend (torch applies them with forward hooks,
the exported graphs of inference/backends take them as inputs), so a seed gives the same samples everywhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# elementwise masks: numpy's Philox4x32-10, keyed by (sample_seed(seed, window, sample), call), counter from 0
MASK_GENERATOR = "philox4x32-10"


def is_dropout(module: nn.Module) -> bool:
    """True for torch dropout layers, also inside TorchScript modules."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    return getattr(module, "original_name", "") in {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                                    "AlphaDropout", "FeatureAlphaDropout"}


def set_dropout(network: nn.Module, enabled: bool) -> int:
    """Put ``network`` in eval mode with only its dropout modules in train mode if ``enabled``.

    Returns the number of dropout modules. BatchNorm/InstanceNorm always stay in eval mode (calling
    ``network.train()`` instead, as some tools do, would use batch statistics of the samples).
    """
    network.eval()
    count = 0
    for module in network.modules():
        if is_dropout(module):
            module.train(enabled)
            count += 1
    return count


def count_active_dropout(network: nn.Module) -> int:
    """The torch dropout modules of ``network`` with p > 0: what MC dropout can sample. TorchScript modules
    are not counted (a traced graph may have recorded eval mode)."""
    return sum(1 for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)


_HOOKABLE_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def sample_seed(seed: int, window: int, sample: int) -> int:
    """The 63-bit seed of one sample's elementwise masks in one window, from the run's ``seed`` (any int)."""
    entropy = [seed % 2**64, window, sample]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def channel_seed(seed: int, sample: int, call: int) -> int:
    """The 63-bit seed of sample ``sample``'s channel mask at its ``call``-th channel-dropout call (0-based):
    no window in it. A spawn key keeps it apart from every :func:`sample_seed`."""
    sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(sample, call))
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)


def sample_channel_seed(seed: int, sample: int) -> int:
    """The 63-bit seed of the torch generator of one whole sample (all windows) for TorchScript networks
    whose dropout is all channel dropout: their channel masks are drawn in call order from it."""
    sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(sample,))
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)


_CHANNEL_DROPOUT_NAMES = {"Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout"}


def only_channel_dropout(network: nn.Module) -> bool:
    """True when the network has dropout and all of it is channel dropout (masks of shape (N, C, 1, ...),
    independent of the window), TorchScript modules included (by their original name)."""
    names = [type(m).__name__ if isinstance(m, nn.modules.dropout._DropoutNd) else m.original_name
             for m in network.modules() if is_dropout(m)]
    return bool(names) and all(n in _CHANNEL_DROPOUT_NAMES for n in names)


def per_sample_dropout_possible(network: nn.Module) -> bool:
    """True when every dropout module is torch's own (Dropout, Dropout1d/2d/3d), not TorchScript or alpha
    dropout: their masks can then be drawn per batch element by :func:`per_sample_dropout`."""
    return all(type(m) in _HOOKABLE_DROPOUT for m in network.modules() if is_dropout(m))


@dataclass(frozen=True)
class DropoutCall:
    """One dropout call of a forward pass, in call order: elementwise (nn.Dropout) or channel dropout, its p,
    and the shape of its output without the batch axis, (C, z, y, x)."""

    elementwise: bool
    p: float
    shape: tuple[int, ...]

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """The mask's shape without the batch axis: ``shape`` elementwise, (C, 1, ...) for channel dropout."""
        return self.shape if self.elementwise else (self.shape[0], *[1] * (len(self.shape) - 1))


class SampleMasks:
    """The dropout masks of one batch: element b is sample ``samples[b]`` of window ``window`` in the run seeded
    ``seed``. Each call of :meth:`keep` gives the next dropout call's keep mask (call order):

    - the j-th elementwise call: element b keeps a voxel when its 32-bit word u of a Philox4x32-10 stream
      keyed by (``sample_seed(seed, window, samples[b])``, j), counter from 0, has u / 2^32 >= p (the words
      fill the mask in C order). Counter-based: each (seed, window, sample, call) is its own stream, drawn
      in one vectorised call, with no per-sample generator state;
    - the j-th channel call: the (C,) mask from a torch generator seeded ``channel_seed(seed, samples[b], j)``,
      whatever the window (one draw per sample across all its windows), kept where U(0, 1) >= p.

    Every backend draws its masks here, so a seed gives the same samples on all of them."""

    def __init__(self, seed: int, window: int, samples: Sequence[int], device: torch.device | str = "cpu"):
        self.seed, self.samples, self.device = seed, list(samples), torch.device(device)
        self.keys = [sample_seed(seed, window, t) for t in self.samples]
        self.element_calls = self.channel_calls = 0

    def _next(self, call: DropoutCall, scale: bool) -> torch.Tensor | None:
        """The next call's mask: bool keep, or float32 keep / (1 - p) if ``scale``; None when p <= 0 and not
        ``scale`` (all kept, nothing drawn)."""
        batch, shape = len(self.samples), (len(self.samples), *call.mask_shape)
        if call.elementwise:
            index, self.element_calls = self.element_calls, self.element_calls + 1
        else:
            index, self.channel_calls = self.channel_calls, self.channel_calls + 1
        if call.p <= 0.0 or call.p >= 1.0:
            if not scale and call.p <= 0.0:
                return None
            fill = torch.ones if call.p <= 0.0 else torch.zeros
            return fill(shape, dtype=torch.float32 if scale else torch.bool, device=self.device)
        if call.elementwise:
            size = math.prod(call.shape)
            threshold = np.uint32(math.ceil(call.p * 2.0**32))  # u / 2^32 >= p  <=>  u >= ceil(p 2^32)
            keep = np.empty((batch, size), np.float32 if scale else np.bool_)
            for b, key in enumerate(self.keys):
                words = np.random.Philox(key=[key, index]).random_raw((size + 1) // 2).view(np.uint32)[:size]
                if scale:
                    np.multiply(words >= threshold, np.float32(1.0 / (1.0 - call.p)), out=keep[b])
                else:
                    np.greater_equal(words, threshold, out=keep[b])
            return torch.from_numpy(keep).view(shape).to(self.device)
        draws = torch.stack([self._channel_draw(t, index, call.shape[0]) for t in self.samples]).view(shape)
        keep = draws >= call.p
        return keep.to(torch.float32) * (1.0 / (1.0 - call.p)) if scale else keep

    def keep(self, call: DropoutCall) -> torch.Tensor | None:
        """(B, *shape) bool for an elementwise call, (B, C, 1, ...) for a channel call; None when p <= 0 (all
        kept); all False when p >= 1."""
        return self._next(call, scale=False)

    def _channel_draw(self, sample: int, call: int, channels: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(channel_seed(self.seed, sample, call))
        return torch.rand(channels, generator=generator).to(self.device)

    def scaled(self, layout: Sequence[DropoutCall]) -> list[torch.Tensor]:
        """The float32 multipliers keep / (1 - p) of every call of ``layout`` in order (1 where p <= 0): the
        explicit mask inputs of an exported graph."""
        return [self._next(call, scale=True) for call in layout]


def dropout_call(module: nn.Module, output: torch.Tensor) -> DropoutCall:
    """The :class:`DropoutCall` of one hookable dropout module's call on ``output`` (N, C, ...)."""
    return DropoutCall(type(module) is nn.Dropout, float(module.p), tuple(output.shape[1:]))


@torch.no_grad()
def dropout_layout(network: nn.Module, window: Sequence[int]) -> list[DropoutCall]:
    """The dropout calls of one pass of ``network`` on a (1, 1, *window) input, in call order (needs
    :func:`per_sample_dropout_possible`)."""
    calls: list[DropoutCall] = []
    handles = [m.register_forward_hook(lambda m, _i, out: calls.append(dropout_call(m, out)))
               for m in network.modules() if is_dropout(m)]
    set_dropout(network, False)
    try:
        network(torch.zeros((1, 1, *window)))
    finally:
        for h in handles:
            h.remove()
    return calls


@contextlib.contextmanager
def per_sample_dropout(network: nn.Module, masks: SampleMasks) -> Iterator[None]:
    """Within the block, the active dropout modules of ``network`` multiply their output by the next mask of
    ``masks`` (call order), scaled by 1 / (1 - p): batch element b is sample ``masks.samples[b]``.

    Needs :func:`per_sample_dropout_possible`; the modules are switched to eval (identity) and a forward
    hook applies the mask, so torch's global generator is not used.
    """

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        call = dropout_call(module, output)
        if output.shape[0] != len(masks.samples):
            raise RuntimeError(f"dropout input batch {output.shape[0]} != {len(masks.samples)} samples")
        keep = masks.keep(call)
        if keep is None:
            return output
        if call.p >= 1.0:
            return torch.zeros_like(output)
        return output * keep.to(output.device, output.dtype) * (1.0 / (1.0 - call.p))

    active = [m for m in network.modules() if is_dropout(m) and m.training]
    handles = [m.register_forward_hook(hook) for m in active]
    for m in active:
        m.eval()
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in active:
            m.train()
