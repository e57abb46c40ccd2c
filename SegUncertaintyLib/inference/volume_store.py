"""A run's output volumes kept as raw files (core/spill.py) and read back as images when looked up."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.spill import RawArray, SlabWriter, open_new, write_to


class VolumeStore:
    """A run's output volumes, each a (z, y, x) array on ``reference``'s grid kept as a file in ``folder``."""

    def __init__(self, folder: str | Path, reference: sitk.Image):
        self.folder, self.reference = Path(folder), reference
        self.shape = tuple(reversed(reference.GetSize()))
        self.arrays: dict[str, RawArray] = {}

    def writer(self, name: str, dtype=np.float32) -> SlabWriter:
        """A writer for volume ``name``; ``close()`` it, then ``add`` what it returns."""
        return SlabWriter(self._path(name), self.shape, dtype)

    def add(self, name: str, array: RawArray) -> None:
        self.arrays[name] = array

    def put(self, name: str, array: np.ndarray) -> None:
        """Write a whole volume (no copy when it is C-contiguous)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"volume {name} has shape {array.shape}, the store {self.shape}")
        path = self._path(name)
        with open_new(path) as file:
            write_to(np.ascontiguousarray(array), file, path)
        self.arrays[name] = RawArray(path, array.shape, array.dtype)

    def images(self, names: Mapping[str, str]) -> StoredImages:
        """A mapping key -> sitk image of the stored volume ``names[key]``, read when looked up."""
        return StoredImages(self, dict(names))

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.raw"


class StoredImages(Mapping):
    """key -> sitk.Image read from a VolumeStore at each lookup (a new image each time; keep one at a time).
    ``.arrays`` is the same mapping as (z, y, x) numpy arrays. Valid as long as the store's folder exists."""

    def __init__(self, store: VolumeStore, names: dict[str, str]):
        self.store, self.names = store, names
        self.arrays = _StoredArrays(store, names)

    def __getitem__(self, key: str) -> sitk.Image:
        array = self.arrays[key]
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.store.reference)
        return image

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class _StoredArrays(Mapping):
    def __init__(self, store: VolumeStore, names: dict[str, str]):
        self.store, self.names = store, names

    def __getitem__(self, key: str) -> np.ndarray:
        return self.store.arrays[self.names[key]].load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
