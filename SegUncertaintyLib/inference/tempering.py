"""The temperature step: one t > 0 divides every pass's logits before its softmax, so a run's mean
probability is p_t = (1/T) sum_s softmax(z_s / t) (calibration/temperature.py fits t).

Card models apply it to the network's logits (sliding_window: after the network call and the flip back).
Whole-volume formats hand over probabilities, so the step acts on their log-probabilities: softmax(ln p / t)
= softmax(z / t) exactly when p = softmax(z), since ln p = z - logsumexp(z) differs from z by a constant per
voxel. For nnU-Net (softmax of its resampled logits) this is exact; for a MONAI bundle whose inversion
resamples probabilities after the softmax, it tempers those resampled probabilities. A probability that
underflowed to 0 in float32 stays 0. t = 1 returns the input unchanged (the same object): bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


def temper_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits`` / t (any shape); the same tensor at t = 1."""
    return logits if temperature == 1.0 else logits / temperature


def temper_probabilities(p: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray | torch.Tensor:
    """softmax(ln p / t) over axis 0 of (C, ...) probabilities, float32; ``p`` itself at t = 1."""
    if temperature == 1.0:
        return p
    log_p = torch.log(torch.as_tensor(p).float()) / temperature  # ln 0 = -inf stays -inf: probability 0
    return torch.softmax(log_p, dim=0)


def tempered_slabs(slabs: Iterable[tuple[tuple[slice, ...], object]], temperature: float
                   ) -> Iterator[tuple[tuple[slice, ...], object]]:
    """A whole-volume pass's (region, (C, *region) probabilities) pieces with the temperature applied."""
    for region, p in slabs:
        yield region, temper_probabilities(p, temperature)
