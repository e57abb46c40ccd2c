"""Voxel-wise uncertainty from per-voxel moments of the sampled softmax outputs.

Conventions (paper 001's public code, paper 003): entropies are normalized by ln(C) so they lie in
[0, 1]; variance is the unbiased variance over the T samples, maximum over classes ("u-map").
All functions take the class axis first: ``mean_p`` is (C, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def entropy(p: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Shannon entropy of distributions along ``dim``, in nats (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(dim)


def normalized_entropy(p: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Entropy divided by ln(C): 0 for a one-hot distribution, 1 for the uniform one."""
    return entropy(p, dim) / math.log(p.shape[dim])


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of a one-vs-rest probability in nats (natural log, as Mehrtash et al. 2020 eq. 7), in [0, ln 2]."""
    q = p.clamp(0.0, 1.0)
    return entropy(torch.stack([q, 1.0 - q]), 0)


def uncertainty_maps(mean_p: torch.Tensor, mean_p2: torch.Tensor, mean_h: torch.Tensor, n_samples: int):
    """Maps from the first two moments of the samples and their mean entropy.

    mean_p, mean_p2: (C, ...) E_t[p_t] and E_t[p_t^2]; mean_h: (...) E_t[H(p_t)] normalized by ln C.
    Returns a dict of (...) tensors: ``entropy`` H(E_t p)/ln C (predictive), ``expected_entropy``
    (aleatoric part), ``mutual_information`` = entropy - expected_entropy (epistemic part, >= 0) and
    ``variance`` = max_c of the unbiased variance of p_c over samples (0 when T = 1).
    """
    total = normalized_entropy(mean_p, 0)
    mutual = (total - mean_h).clamp_min(0.0)
    if n_samples > 1:
        variance = ((mean_p2 - mean_p * mean_p) * (n_samples / (n_samples - 1))).amax(0).clamp_min(0.0)
    else:
        variance = torch.zeros_like(total)
    return {"entropy": total, "expected_entropy": mean_h, "mutual_information": mutual, "variance": variance}


def class_argmax(p: torch.Tensor, dim: int) -> torch.Tensor:
    """``p.argmax(dim)`` as uint8 (first maximum wins), by C elementwise passes.

    torch's CPU argmax over a short, non-innermost class axis is about 10x slower than this.
    """
    return first_max_index(p.unbind(dim))


def first_max_index(planes: Sequence[torch.Tensor] | Sequence[np.ndarray]) -> torch.Tensor | np.ndarray:
    """The index of the largest of C same-shaped ``planes`` per element, as uint8 (first maximum wins, as
    argmax): ``class_argmax`` of planes that are not stacked (stacking an input-grid volume's classes costs a
    copy of all of them). Torch tensors give a tensor; numpy arrays (read-only views of images too, which
    torch cannot wrap) give an array."""
    best, last = planes[0], len(planes) - 1
    if isinstance(best, np.ndarray):
        labels, maximum = np.zeros(best.shape, np.uint8), np.maximum
    else:
        labels, maximum = torch.zeros(best.shape, dtype=torch.uint8, device=best.device), torch.maximum
    for k in range(1, last + 1):
        labels[planes[k] > best] = k
        best = maximum(best, planes[k]) if k < last else best
    return labels
