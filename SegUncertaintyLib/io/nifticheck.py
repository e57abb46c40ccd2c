"""Detect truncated NIfTI files, which ITK's NIfTI reader silently fills with zeros.

The header gives the data offset, the dimensions and the bits per voxel; the file (decompressed, for
``.nii.gz``) must hold at least offset + product(dims) * bitpix / 8 bytes.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

from ..errors import InputImageError

_CHUNK = 1 << 22


def _expected_bytes(header: bytes, path: Path) -> int:
    """Bytes a complete file must hold, from a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header."""
    for endian in "<>":
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] == 540 and len(header) >= 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        raise InputImageError(f"Cannot read {path}: not a NIfTI file (bad header)")
    n_dims = max(1, min(int(dims[0]), 7))
    voxels = math.prod(max(1, int(d)) for d in dims[1:1 + n_dims])
    return max(offset, 348) + voxels * max(bitpix, 8) // 8


def check_nifti_complete(path: str | Path) -> None:
    """Raise InputImageError if a .nii or .nii.gz file is shorter than its header says (or corrupt)."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".nii.gz"):
            with gzip.open(path, "rb") as stream:
                header = stream.read(540)
                total = len(header)
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
        else:
            with open(path, "rb") as stream:
                header = stream.read(540)
            total = path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise InputImageError(f"Cannot read {path}: truncated or corrupt compressed file ({exc})") from exc
    expected = _expected_bytes(header, path)
    if total < expected:
        raise InputImageError(f"Cannot read {path}: truncated file ({total} of {expected} bytes)")
