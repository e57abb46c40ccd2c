"""Streaming moments over whole-volume passes (one pass = one sample of an uncertainty method).

Some model formats produce each sample as a whole probability volume that only their own code can make
(nnU-Net: sliding window over logits, resampling and softmax; a MONAI bundle: its own inferer and its
inverted transforms). Their samples are reduced here, one at a time, to the same statistics the
sliding-window engine blends: sum_t p_t, sum_t p_t^2, sum_t H(p_t) per class and voxel, and one bit per
sample per foreground class for the per-sample segmentations. The maps are derived afterwards by the
engine's own function, so every format gets the same entropy, MI, variance and expected entropy.

Memory: 4 * (2C + 1) bytes per voxel plus (C - 1) * ceil(T / 8) bytes for the bits; the pass being
added is the caller's (never all T passes at once).
"""

from __future__ import annotations

import numpy as np
import torch

from .engine import _derive_maps, class_argmax
from .maps import normalized_entropy


class MomentAccumulator:
    """Running sums over T passes of (C, *S) probability volumes.

    ``add`` takes each pass in turn; ``finish`` returns (mean_p (C, *S), maps name -> (*S),
    sample_bits (C-1, ceil(T/8), *S) uint8 with sample t in bit t % 8 of byte t // 8).
    """

    def __init__(self, n_classes: int, shape: tuple[int, ...], n_samples: int, slab: int = 16):
        if n_classes < 2 or n_samples < 1:
            raise ValueError("need at least 2 classes and 1 sample")
        self.n_classes, self.shape, self.n_samples, self.slab = n_classes, tuple(shape), n_samples, slab
        self.sum_p = torch.zeros((n_classes, *shape))
        self.sum_p2 = torch.zeros((n_classes, *shape))
        self.sum_h = torch.zeros(shape)
        self.bits = torch.zeros((n_classes - 1, (n_samples + 7) // 8, *shape), dtype=torch.uint8)
        self.count = 0

    def add(self, probabilities: np.ndarray | torch.Tensor) -> None:
        """Add one pass: (C, *S) probabilities summing to 1 over C. Worked in z-slabs to keep temporaries small."""
        p_all = torch.as_tensor(probabilities)
        if tuple(p_all.shape) != (self.n_classes, *self.shape):
            raise ValueError(f"pass has shape {tuple(p_all.shape)}, expected {(self.n_classes, *self.shape)}")
        if self.count >= self.n_samples:
            raise ValueError(f"more passes than the {self.n_samples} announced")
        byte, bit = divmod(self.count, 8)
        for z in range(0, self.shape[0], self.slab):
            zs = slice(z, z + self.slab)
            p = p_all[:, zs].float()
            self.sum_p[:, zs] += p
            self.sum_p2[:, zs].addcmul_(p, p)
            self.sum_h[zs] += normalized_entropy(p, 0)
            labels = class_argmax(p, 0)
            for k in range(1, self.n_classes):
                self.bits[k - 1, byte, zs] |= (labels == k).to(torch.uint8) << bit
        self.count += 1

    def finish(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Means over the passes added and the maps derived from them (the accumulator is consumed)."""
        if self.count != self.n_samples:
            raise ValueError(f"{self.count} passes added, {self.n_samples} announced")
        inv = 1.0 / self.count
        mean_p, mean_p2, mean_h = self.sum_p.mul_(inv), self.sum_p2.mul_(inv), self.sum_h.mul_(inv)
        maps = _derive_maps(mean_p, mean_p2, mean_h, self.count)
        del mean_p2
        self.sum_p2 = None
        return mean_p, maps, self.bits
