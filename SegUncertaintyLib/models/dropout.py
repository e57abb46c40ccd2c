"""Dropout control of a network: only the dropout modules in train mode, and per-sample masks.

Randomness: sample t of window w draws its dropout masks from its own generator, seeded from
(seed, w, t) (:func:`sample_seed`), so a result never depends on which samples share a forward pass:
``--max-batch`` and the out-of-memory fallback that halves it cannot change the maps.
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
    """The 63-bit seed of one sample of one window, derived from the run's ``seed`` (any int)."""
    entropy = [seed % 2**64, window, sample]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def per_sample_dropout_possible(network: nn.Module) -> bool:
    """True when every dropout module is torch's own (Dropout, Dropout1d/2d/3d), not TorchScript or alpha
    dropout: their masks can then be drawn per batch element by :func:`per_sample_dropout`."""
    return all(type(m) in _HOOKABLE_DROPOUT for m in network.modules() if is_dropout(m))


@contextlib.contextmanager
def per_sample_dropout(network: nn.Module, seeds: Sequence[int], device: torch.device) -> Iterator[None]:
    """Within the block, the active dropout modules draw batch element b's mask from a generator seeded
    with ``seeds[b]`` (elementwise for Dropout, per channel for DropoutNd), in module-call order.

    Needs :func:`per_sample_dropout_possible`; the modules are switched to eval (identity) and a forward
    hook applies the mask, so torch's global generator is not used.
    """
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        p = float(module.p)
        if p <= 0.0:
            return output
        if p >= 1.0:
            return torch.zeros_like(output)
        if output.shape[0] != len(generators):
            raise RuntimeError(f"dropout input batch {output.shape[0]} != {len(generators)} samples")
        shape = output.shape[1:] if type(module) is nn.Dropout else (output.shape[1], *[1] * (output.dim() - 2))
        keep = torch.stack([torch.rand(shape, generator=g, device=output.device) >= p for g in generators])
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
