"""Streaming moments over whole-volume passes (one pass = one sample of an uncertainty method).

Some model formats produce each sample as a whole probability volume that only their own code can make
(nnU-Net: sliding window over logits, resampling and softmax; a MONAI bundle: its own inferer and its
inverted transforms). Their samples are reduced here, one at a time and region by region (a pass may
arrive as slabs: ``add_slabs``), to the same statistics the sliding window blends: per class and
voxel sum_t p_t and the centred second moment M2 = sum_t (p_t - mean)^2 (Welford's update), sum_t H(p_t),
and one bit per sample per foreground class for the per-sample segmentations. The maps are derived
afterwards by maps.uncertainty_maps, so every format gets the same entropy, MI, variance and expected
entropy.

Memory per voxel: 4 (C - 1) (sums of the foreground classes, float32; the background's is T minus
theirs) + 2 C (M2, float16) + 4 (entropy sum) bytes plus (C - 1) * ceil(T / 8) bytes for the bits: 20
bytes for C = 3 and T <= 8, against 4 (2C + 1) + bits = 30 with float32 sums and squares, allocated
when the first pass's first piece arrives. Given a ``folder``, the sums live in files there instead and
each piece of a pass reads, updates and writes back its own region, so only a piece's worth is ever in
memory. The pass being added is the caller's (never all T passes at once). ``finish`` adds the variance
map (4 bytes), frees M2, then adds the entropy and MI maps and the labels (9 bytes); with a
``VolumeStore`` the three maps go to its files slab by slab instead (labels: 1 byte), and sums in files
become the means (12 bytes) slab by slab.

Precision of M2 in float16: M2 only grows, and each of the T - 1 updates rounds it once to 11 significant
bits, so the variance map's error is at most (T - 1) * 2^-11 of its value (plus 2^-24 per update below
float16's normal range): 0.05 % for two folds, 2 % for T = 40 passes at worst (random rounding: about
sqrt(T - 1) * 2^-12). Sums of p and of H stay float32, so the mean probability (the background's to about
1e-7), entropy, expected entropy and MI keep float32 precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..core.spill import RawArray
from .maps import class_argmax, normalized_entropy, uncertainty_maps
from .volume_store import VolumeStore

# The background's mean is derived (1 - the others' sum), about 1e-7 off in float32; nnU-Net's float16 logits
# often give a class exactly the background's probability, and argmax keeps the first (background) then:
# the background wins every comparison within this margin, so such ties stay background.
BACKGROUND_TIE = 1e-6
Region = tuple[slice, ...]  # index of the leading spatial axes; missing trailing axes are whole


def sums_nbytes(n_classes: int, shape: tuple[int, ...], n_samples: int) -> int:
    """Bytes of a MomentAccumulator's running sums and bits for (C, *S) passes, T of them."""
    c = n_classes
    return int(np.prod(shape)) * (4 * (c - 1) + 2 * c + 4 + (c - 1) * ((n_samples + 7) // 8))


class MomentAccumulator:
    """Running sums over T passes of (C, *S) probability volumes.

    ``add_slabs`` takes each pass in turn, as regions (``[((), p)]``: a whole pass); ``finish`` returns
    the foreground classes' mean probabilities, the labels, the maps name -> (*S) and sample_bits
    (C-1, ceil(T/8), *S) uint8 with sample t in bit t % 8 of byte t // 8.

    With ``folder`` the sums live in files there (created when the first piece arrives; sparse zeros):
    each piece reads its region of every sum, updates it and writes it back, so a pass and the sums are
    never in memory together, whatever the pass's own peak (nnU-Net's sliding window). A folder where the
    files cannot be created keeps the sums in memory. Same numbers either way (raw bytes).
    """

    def __init__(self, n_classes: int, shape: tuple[int, ...], n_samples: int, slab_voxels: int = 1 << 20,
                 folder: str | Path | None = None):
        if n_classes < 2 or n_samples < 1:
            raise ValueError("need at least 2 classes and 1 sample")
        self.n_classes, self.shape, self.n_samples = n_classes, tuple(shape), n_samples
        self.slab = max(1, slab_voxels // max(1, int(np.prod(self.shape[1:]))))  # planes per slab
        self.folder = None if folder is None else Path(folder)
        self.state: dict[str, torch.Tensor | RawArray] | None = None  # allocated with the first piece
        self.count = 0

    def _layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Each running sum's (leading dims, dtype); its shape is (*leading, *S)."""
        c = self.n_classes
        return {**{f"sum_p{k}": ((), torch.float32) for k in range(1, c)},  # foreground classes only
                "m2": ((c,), torch.float16), "sum_h": ((), torch.float32),
                "bits": ((c - 1, (self.n_samples + 7) // 8), torch.uint8)}

    def _allocate(self) -> None:
        layout = self._layout()
        if self.folder is not None:
            files: dict[str, RawArray] = {}
            try:
                for name, (lead, dtype) in layout.items():
                    files[name] = RawArray.zeros(self.folder / f"{name}.raw", (*lead, *self.shape),
                                                 torch.empty((), dtype=dtype).numpy().dtype)
                self.state = files
                return
            except OSError:  # e.g. a full disk or a folder gone: the sums stay in memory
                for array in files.values():
                    array.delete()
        self.state = {name: torch.zeros((*lead, *self.shape), dtype=dtype) for name, (lead, dtype) in layout.items()}

    @property
    def in_files(self) -> bool:
        return self.state is not None and isinstance(self.state["sum_h"], RawArray)

    def add_slabs(self, slabs: Iterable[tuple[Region, np.ndarray | torch.Tensor]]) -> None:
        """Add one pass given as (region, (C, *region shape) probabilities) pieces that tile the volume
        exactly once (checked by voxel count); region () is the whole volume, worked in z-slabs."""
        if self.count >= self.n_samples:
            raise ValueError(f"more passes than the {self.n_samples} announced")
        covered = 0
        for region, p in slabs:
            p = torch.as_tensor(p)
            if tuple(region) == ():
                if tuple(p.shape) != (self.n_classes, *self.shape):
                    raise ValueError(f"pass has shape {tuple(p.shape)}, expected {(self.n_classes, *self.shape)}")
                for z in range(0, self.shape[0], self.slab):
                    covered += self._add_region((slice(z, z + self.slab),), p[:, z:z + self.slab])
            else:
                covered += self._add_region(tuple(region), p)
        if covered != int(np.prod(self.shape)):
            raise ValueError(f"a pass covered {covered} voxels, the volume has {int(np.prod(self.shape))}")
        self.count += 1

    def _region(self, region: Region, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Each sum's part over ``region`` (all, or ``names``): views of the in-memory sums, or copies read
        from the files."""
        out, layout = {}, self._layout()
        for name in self.state if names is None else names:
            value = self.state[name]
            index = (*(slice(None),) * len(layout[name][0]), *region)
            out[name] = torch.from_numpy(value.read_box(index)) if isinstance(value, RawArray) else value[index]
        return out

    def _write_region(self, region: Region, parts: dict[str, torch.Tensor]) -> None:
        """Write the updated parts back to the files (in memory they were views, already in place)."""
        layout = self._layout()
        for name, value in self.state.items():
            if isinstance(value, RawArray):
                value.write_box((*(slice(None),) * len(layout[name][0]), *region), parts[name].numpy())

    def _add_region(self, region: Region, p: torch.Tensor) -> int:
        if self.state is None:
            self._allocate()
        target = torch.empty(self.shape, dtype=torch.uint8, device="meta")[region].shape
        if tuple(p.shape) != (self.n_classes, *target):
            raise ValueError(f"pass has shape {tuple(p.shape)} for a region of shape {(self.n_classes, *target)}")
        n, (byte, bit) = self.count, divmod(self.count, 8)
        p = p.float()
        part = self._region(region)
        sums = [part[f"sum_p{k}"] for k in range(1, self.n_classes)]
        if n:  # Welford: M2 += (p - mean_old)^2 * n / (n + 1), mean_old = sum / n
            m2 = part["m2"]
            background = n - torch.stack(sums).sum(0)  # the passes' softmax sums to 1 (to float32 precision)
            for k, sum_k in enumerate([background, *sums]):
                delta = p[k] - sum_k / n
                m2[k].copy_(m2[k].float().addcmul_(delta, delta, value=n / (n + 1)))  # one float16 rounding
        for k, sum_k in enumerate(sums, start=1):
            sum_k += p[k]
        part["sum_h"] += normalized_entropy(p, 0)
        labels = class_argmax(p, 0)
        for k in range(1, self.n_classes):
            part["bits"][k - 1, byte] |= (labels == k).to(torch.uint8) << bit
        self._write_region(region, part)
        return labels.numel()

    def finish(self, store: VolumeStore | None = None
               ) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Means over the passes added, the labels and maps derived from them (the accumulator is consumed).

        Returns (mean_p: C - 1 (*S) tensors, the foreground classes'; labels: (*S) uint8 argmax of the mean,
        first maximum wins, background within BACKGROUND_TIE; maps; sample bits). The background's mean,
        1 - the others' sum (clamped at 0), is only formed slab by slab. With ``store``, the variance,
        entropy and mutual information maps are written there slab by slab as they are formed (never whole
        in memory) and ``maps`` holds only ``expected_entropy``. Sums kept in memory become the means in
        place; sums in files are read slab by slab (the files are deleted).
        """
        if self.count != self.n_samples:
            raise ValueError(f"{self.count} passes added, {self.n_samples} announced")
        t, fg = self.count, range(1, self.n_classes)
        variance = _MapOutput(self.shape, store, "variance")
        sums = [f"sum_p{k}" for k in fg]
        for zs, part in self._slabs([*sums, "m2", "sum_h"]):  # first the variance, then M2 is freed (lower peak)
            p = self._mean(part, t)
            mean_p2 = part["m2"].float().div_(t).addcmul_(p, p)  # E[p^2] = M2 / T + E[p]^2
            variance.put(zs, uncertainty_maps(p, mean_p2, part["sum_h"] / t, t)["variance"])
        maps = {"variance": variance.close()}
        self._drop("m2")
        files = self.in_files
        mean_p = [torch.empty(self.shape) if files else self.state[f"sum_p{k}"] for k in fg]
        mean_h = torch.empty(self.shape) if files else self.state["sum_h"]
        labels = torch.empty(self.shape, dtype=torch.uint8)
        entropy = _MapOutput(self.shape, store, "entropy")
        mutual = _MapOutput(self.shape, store, "mutual_information")
        for zs, part in self._slabs([*sums, "sum_h"]):
            p = self._mean(part, t)
            for k in fg:
                mean_p[k - 1][zs] = p[k]
            mean_h[zs] = part["sum_h"].mul_(1.0 / t)
            piece = uncertainty_maps(p, p * p, mean_h[zs], t)  # the second moment only enters the variance
            entropy.put(zs, piece["entropy"])
            mutual.put(zs, piece["mutual_information"])
            p[0] += BACKGROUND_TIE
            labels[zs] = class_argmax(p, 0)
        maps.update(entropy=entropy.close(), mutual_information=mutual.close(), expected_entropy=mean_h)
        bits = self.state["bits"]
        bits = torch.from_numpy(bits.load()) if isinstance(bits, RawArray) else bits
        for name in list(self.state):
            self._drop(name)
        return mean_p, labels, {k: v for k, v in maps.items() if v is not None}, bits

    def _slabs(self, names: list[str]):
        """(z slice, the named sums' parts over it) for each slab of planes."""
        for z in range(0, self.shape[0], self.slab):
            zs = slice(z, min(z + self.slab, self.shape[0]))
            yield zs, self._region((zs,), names)

    def _mean(self, part: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        """(C, slab) mean probabilities from the sums' part, the background derived (clamped at 0)."""
        foreground = torch.stack([part[f"sum_p{k}"] for k in range(1, self.n_classes)]) / t
        return torch.cat([(1.0 - foreground.sum(0, keepdim=True)).clamp_min_(0.0), foreground])

    def _drop(self, name: str) -> None:
        value = self.state.pop(name)
        if isinstance(value, RawArray):
            value.delete()


class _MapOutput:
    """One map formed slab by slab: into a tensor, or (with a store) straight into the store's file."""

    def __init__(self, shape: tuple[int, ...], store: VolumeStore | None, name: str):
        self.name, self.store = name, store
        self.tensor = torch.empty(shape) if store is None else None
        self.writer = None if store is None else store.writer(name)

    def put(self, zs: slice, values: torch.Tensor) -> None:
        if self.writer is None:
            self.tensor[zs] = values
        else:
            self.writer.append(values.numpy())

    def close(self) -> torch.Tensor | None:
        if self.writer is not None:
            self.store.add(self.name, self.writer.close())
        return self.tensor
