"""Detect what ITK's NIfTI reader hides: truncated files (filled with zeros), sheared sforms (ITK then
silently uses the qform, another grid) and NaN or infinite voxels of float files (ITK reads them as 0).

The header gives the data offset, the dimensions and the bits per voxel; the file (decompressed, for
``.nii.gz``) must hold at least offset + product(dims) * bitpix / 8 bytes. An sform (sform_code > 0) must
have orthonormal direction columns, as header.check_geometry requires of every format. A float32 or
float64 file's voxels are scanned for NaN and infinities as the file is read.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError
from .header import check_geometry

_CHUNK = 1 << 22
_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


class _NonFiniteCount:
    """Counts NaN and infinite voxels of a float NIfTI's data as its bytes stream past (``feed``)."""

    def __init__(self, dtype: np.dtype, offset: int, n_bytes: int):
        self.dtype, self.skip, self.left = dtype, offset, n_bytes
        self.rest, self.count = b"", 0

    def feed(self, data: bytes) -> None:
        cut = min(self.skip, len(data))
        self.skip -= cut
        data = data[cut:cut + self.left]
        self.left -= len(data)
        data = self.rest + data
        whole = len(data) - len(data) % self.dtype.itemsize
        values = np.frombuffer(data[:whole], dtype=self.dtype)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))
        self.rest = data[whole:]


def _fields(header: bytes, path: Path) -> tuple[tuple, int, int, int, np.ndarray]:
    """(dims, bitpix, data offset, sform_code, srow (3, 4)) from a NIfTI-1 (348-byte) or NIfTI-2 header."""
    for endian in "<>":
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            sform_code = struct.unpack(endian + "h", header[254:256])[0]
            srow = struct.unpack(endian + "12f", header[280:328])
            break
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] == 540 and len(header) >= 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            sform_code = struct.unpack(endian + "i", header[348:352])[0]
            srow = struct.unpack(endian + "12d", header[400:496])
            break
    else:
        raise InputImageError(f"Cannot read {path}: not a NIfTI file (bad header)")
    return dims, bitpix, offset, sform_code, np.array(srow, dtype=float).reshape(3, 4)


def _float_dtype(header: bytes) -> np.dtype | None:
    """The numpy dtype of a float32/float64 NIfTI-1 or NIfTI-2 file's voxels, None for other types."""
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if size in (348, 540):
            code = struct.unpack(endian + "h", header[70:72] if size == 348 else header[12:14])[0]
            return np.dtype(endian + _FLOAT_TYPES[code]) if code in _FLOAT_TYPES else None
    return None


def _expected_bytes(dims: tuple, bitpix: int, offset: int) -> int:
    """Bytes a complete file must hold."""
    n_dims = max(1, min(int(dims[0]), 7))
    voxels = math.prod(max(1, int(d)) for d in dims[1:1 + n_dims])
    return max(offset, 348) + voxels * max(bitpix, 8) // 8


def _check_sform(sform_code: int, srow: np.ndarray, path: Path) -> None:
    """Refuse an sform with absurd spacing or sheared axes (ITK would replace it by the qform)."""
    if sform_code <= 0:
        return
    matrix = srow[:, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / np.where(spacing > 0, spacing, 1.0)
    check_geometry(spacing.tolist(), srow[:, 3].tolist(), direction.flatten().tolist(), f"{path} (NIfTI sform)")


def check_nifti_complete(path: str | Path) -> None:
    """Raise InputImageError if a .nii or .nii.gz file is shorter than its header says (or corrupt), if its
    sform is sheared or has absurd spacing, or if a float file holds NaN or infinite voxels."""
    path = Path(path)
    compressed = path.name.lower().endswith(".nii.gz")
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            header = stream.read(540)
            dims, bitpix, offset, sform_code, srow = _fields(header, path)
            expected = _expected_bytes(dims, bitpix, offset)
            dtype = _float_dtype(header)
            scan = None if dtype is None else _NonFiniteCount(dtype, max(offset, 348), expected - max(offset, 348))
            total = len(header)
            if scan is not None:
                scan.feed(header)
            if compressed or scan is not None:  # a plain integer .nii's size is its length on disk
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
                    if scan is not None:
                        scan.feed(chunk)
            else:
                total = path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise InputImageError(f"Cannot read {path}: truncated or corrupt compressed file ({exc})") from exc
    if total < expected:
        raise InputImageError(f"Cannot read {path}: truncated file ({total} of {expected} bytes)")
    _check_sform(sform_code, srow, path)
    if scan is not None and scan.count:
        raise InputImageError(f"{path} contains {scan.count} NaN or infinite voxels; fix or mask them first")
