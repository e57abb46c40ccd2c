"""Large arrays kept in raw files instead of memory (spilled to disk) while a whole-volume model runs.

One mechanism (a raw C-ordered file whose shape and dtype the owner keeps, read without memory mapping,
so only what is read is resident) for three uses: a pass's intermediate data that waits while something
else needs the memory (nnU-Net's preprocessed input, its logits: ``spill_if_large``); the running sums of
a large run, read, updated and written back region by region (inference/accumulator.py); and a run's
output volumes, written slab by slab and read back one at a time (inference/volume_store.py).
"""

from __future__ import annotations

import itertools
import math
import uuid
from pathlib import Path

import numpy as np

from .errors import ResourceError

# Arrays at least this large are kept in a file when a folder for them is given: a CT of 512 x 512 x 300
# has a 300 MB preprocessed input and 450 MB of float16 logits for 3 classes.
SPILL_BYTES = 256 << 20


class RawArray:
    """An array in a raw file (C order); ``load`` reads it whole, ``planes`` a range of its second axis."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)

    @classmethod
    def write(cls, path: Path, array: np.ndarray) -> RawArray:
        """Write ``array`` (no copy when it is C-contiguous); OSError, with no file left, on failure."""
        array = np.ascontiguousarray(array)
        with open(path, "xb") as file:  # never an existing file
            try:
                array.tofile(file)
            except BaseException:
                Path(path).unlink(missing_ok=True)
                raise
        return cls(path, array.shape, array.dtype)

    @classmethod
    def zeros(cls, path: Path, shape: tuple[int, ...], dtype) -> RawArray:
        """A new file of zeros (sparse: no disk written until a part is written); OSError on failure."""
        array = cls(path, shape, dtype)
        with open(path, "xb") as file:
            file.truncate(math.prod(array.shape) * array.dtype.itemsize)
        return array

    def read_box(self, index: tuple[slice, ...]) -> np.ndarray:
        """``array[index]`` for an index of contiguous slices (missing trailing axes whole), read part by part."""
        out = np.empty(self._box(index)[0], dtype=self.dtype)
        with self._open() as file:
            for offset, piece in self._pieces(index, out):
                file.seek(offset)
                if file.readinto(memoryview(piece).cast("B")) != piece.nbytes:
                    raise ResourceError(f"Temporary data kept in {self.path.parent} was cut short while the run "
                                        "went on; nothing was written")
        return out

    def write_box(self, index: tuple[slice, ...], values: np.ndarray) -> None:
        """``array[index] = values`` in the file."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape != self._box(index)[0]:
            raise ValueError(f"values of shape {values.shape} for a box of shape {self._box(index)[0]}")
        with self._open(write=True) as file:
            for offset, piece in self._pieces(index, values):
                file.seek(offset)
                try:
                    file.write(memoryview(piece).cast("B"))
                except OSError as exc:
                    raise ResourceError(f"Cannot write temporary data in {self.path.parent}: "
                                        f"{exc.strerror or exc} (is the disk full?); nothing was written") from exc

    def _box(self, index: tuple[slice, ...]) -> tuple[tuple[int, ...], list[range]]:
        ranges = [range(*s.indices(n)) for s, n in zip(index, self.shape, strict=False)]
        ranges += [range(n) for n in self.shape[len(ranges):]]
        if any(r.step != 1 for r in ranges):
            raise ValueError("only contiguous slices")
        return tuple(len(r) for r in ranges), ranges

    def _pieces(self, index: tuple[slice, ...], buffer: np.ndarray):
        """(file offset, contiguous part of ``buffer``) for each run of the box that is contiguous in the file:
        the box is whole along the axes after its last partial one."""
        shape, ranges = self._box(index)
        partial = [i for i, (r, n) in enumerate(zip(ranges, self.shape, strict=True)) if len(r) != n]
        last = partial[-1] if partial else 0
        strides = np.cumprod((1, *self.shape[:0:-1]))[::-1]  # elements per step of each axis
        outer = buffer.reshape(*shape[:last], -1)
        for position in itertools.product(*(range(n) for n in shape[:last])):
            start = sum((ranges[i][0] + j) * int(strides[i]) for i, j in enumerate(position))
            yield (start + ranges[last][0] * int(strides[last])) * self.dtype.itemsize, outer[position]

    def _open(self, write: bool = False):
        try:
            return open(self.path, "r+b") if write else open(self.path, "rb")
        except OSError as exc:
            raise ResourceError(f"Temporary data kept in {self.path.parent} could not be read back ({exc}); "
                                "nothing was written") from exc

    def load(self) -> np.ndarray:
        """The whole array; ResourceError when the file was removed or cut short meanwhile."""
        return self.read_box(())

    def planes(self, lo: int, hi: int) -> np.ndarray:
        """``array[:, lo:hi]``: (shape[0], hi - lo, *shape[2:]), one read per index of the first axis."""
        return self.read_box((slice(None), slice(lo, hi)))

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class InMemoryArray:
    """The in-memory counterpart of RawArray (same reading interface)."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape = array, array.shape

    def load(self) -> np.ndarray:
        return self.array

    def planes(self, lo: int, hi: int) -> np.ndarray:
        return self.array[:, lo:hi]

    def delete(self) -> None:
        self.array = None


def spill_if_large(array: np.ndarray, folder: Path | None, name: str) -> RawArray | InMemoryArray:
    """``array`` kept in a file in ``folder`` when it is at least SPILL_BYTES, else (or when the file cannot
    be written, e.g. a full disk) held in memory. The caller drops its own reference."""
    if folder is not None and array.nbytes >= SPILL_BYTES:
        try:
            return RawArray.write(Path(folder) / f"{name}-{uuid.uuid4().hex[:8]}.raw", array)
        except OSError:
            pass
    return InMemoryArray(array)


class SlabWriter:
    """Writes an array of ``shape`` to a RawArray in consecutive slabs along its first axis."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.target = RawArray(path, shape, dtype)
        self.file = open_new(path)
        self.written = 0

    def append(self, slab: np.ndarray) -> None:
        slab = np.ascontiguousarray(slab, dtype=self.target.dtype)
        if slab.shape[1:] != self.target.shape[1:] or self.written + len(slab) > self.target.shape[0]:
            raise ValueError(f"slab of shape {slab.shape} does not continue an array of shape {self.target.shape}")
        write_to(slab, self.file, self.target.path)
        self.written += len(slab)

    def abort(self) -> None:
        """Close and remove the partial file."""
        self.file.close()
        self.target.delete()

    def close(self) -> RawArray:
        self.file.close()
        if self.written != self.target.shape[0]:
            raise ValueError(f"{self.written} of {self.target.shape[0]} planes written to {self.target.path.name}")
        return self.target


def open_new(path: Path):
    try:
        return open(path, "xb")
    except OSError as exc:
        raise ResourceError(f"Cannot write temporary data in {path.parent}: {exc.strerror or exc}; "
                            "nothing was written") from exc


def write_to(array: np.ndarray, file, path: Path) -> None:
    try:
        array.tofile(file)
    except OSError as exc:
        file.close()
        path.unlink(missing_ok=True)
        raise ResourceError(f"Cannot write temporary data in {path.parent}: {exc.strerror or exc} "
                            "(is the disk full?); nothing was written") from exc
