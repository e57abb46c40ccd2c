"""Dropout control of a network: only the dropout modules in train mode, and per-sample masks.

Randomness, so that one sample is one network draw over the whole volume and a result never depends on
which samples share a forward pass (``--max-batch`` and the out-of-memory fallback cannot change the maps):

- elementwise dropout (nn.Dropout): sample t of window w draws its masks, in module-call order, from one
  generator seeded with ``sample_seed(seed, w, t)``. Its masks have the window's shape, so windows cannot
  share them; independent draws per window give the same per-voxel distribution as one whole-volume pass.
- channel dropout (nn.Dropout1d/2d/3d, MONAI's spatial dropout): the mask of the j-th channel-dropout call
  of sample t has shape (channels,) and is drawn from ``channel_seed(seed, t, j)``, whatever the window,
  so every window of sample t drops the same channels, as one pass over the whole volume would. (Drawn per
  window, one sample would be a patchwork of networks and the volume spread would shrink about tenfold.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn


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


@contextlib.contextmanager
def per_sample_dropout(network: nn.Module, element_seeds: Sequence[int], samples: Sequence[int], seed: int,
                       device: torch.device) -> Iterator[None]:
    """Within the block, batch element b is sample ``samples[b]`` of the run seeded ``seed``: nn.Dropout
    draws its (elementwise) masks in call order from a generator seeded with ``element_seeds[b]``; the
    j-th call of a channel dropout (Dropout1d/2d/3d) draws the (C,) mask from ``channel_seed(seed,
    samples[b], j)``. A voxel or channel is kept when its U(0, 1) draw is >= p, then scaled by 1 / (1 - p).

    Needs :func:`per_sample_dropout_possible`; the modules are switched to eval (identity) and a forward
    hook applies the mask, so torch's global generator is not used.
    """
    if len(element_seeds) != len(samples):
        raise ValueError(f"{len(element_seeds)} seeds for {len(samples)} samples")
    generators = [torch.Generator(device=device).manual_seed(s) for s in element_seeds]
    channel_calls = [0]

    def channel_mask(sample: int, call: int, channels: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(channel_seed(seed, sample, call))
        return torch.rand(channels, generator=generator, device=device)

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        p = float(module.p)
        elementwise = type(module) is nn.Dropout
        call = None if elementwise else channel_calls[0]
        if not elementwise:
            channel_calls[0] += 1
        if p <= 0.0:
            return output
        if p >= 1.0:
            return torch.zeros_like(output)
        if output.shape[0] != len(generators):
            raise RuntimeError(f"dropout input batch {output.shape[0]} != {len(generators)} samples")
        if elementwise:
            draws = [torch.rand(output.shape[1:], generator=g, device=output.device) for g in generators]
        else:
            spread = (output.shape[1], *[1] * (output.dim() - 2))
            draws = [channel_mask(t, call, output.shape[1]).to(output.device).view(spread) for t in samples]
        keep = torch.stack(draws) >= p
        return output * keep.to(output.dtype) * (1.0 / (1.0 - p))

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
