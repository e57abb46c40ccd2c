"""Check an image's header (size, voxel type, geometry) before any voxel is read or allocated.

Rules (the same for every format, and for images handed over in memory):

- spacing: finite, between ``SPACING_RANGE_MM`` (1 µm to 1 m per voxel);
- origin: finite, within ``MAX_ORIGIN_MM`` of the scanner's origin;
- direction: a finite orthonormal 3x3 matrix (columns of unit length, at right angles, within
  ``ORTHONORMAL_TOLERANCE``). A sheared grid is refused: NIfTI cannot store it (ITK silently rotates it) and
  NRRD stores it rescaled, so no output format could give it back unchanged;
- memory: voxels x (bytes per voxel in the file + 4 for the float32 copy) must fit in
  ``MEMORY_FRACTION`` of the available RAM, and the voxel count stays under ``max_voxels()``
  (``SEGUNCERTAINTY_MAX_VOXELS``, default 2^30).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputImageError

MAX_VOXELS_ENV = "SEGUNCERTAINTY_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 1 << 30
MEMORY_FRACTION = 0.5
SPACING_RANGE_MM = (1e-3, 1e3)
MAX_ORIGIN_MM = 1e6
ORTHONORMAL_TOLERANCE = 1e-3
FLOAT32_BYTES = 4


class Grid(Protocol):
    """Anything with SimpleITK's geometry getters: ``sitk.Image`` or ``sitk.ImageFileReader`` after
    ``ReadImageInformation()``."""

    def GetSize(self) -> Sequence[int]: ...
    def GetSpacing(self) -> Sequence[float]: ...
    def GetOrigin(self) -> Sequence[float]: ...
    def GetDirection(self) -> Sequence[float]: ...


def max_voxels() -> int:
    """The voxel-count cap: ``$SEGUNCERTAINTY_MAX_VOXELS`` if set to a positive integer, else 2^30."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputImageError(f"{MAX_VOXELS_ENV}={text!r} is not a positive number of voxels")
    return value


def available_memory() -> int | None:
    """Bytes of RAM available now (psutil if installed, else /proc/meminfo, else sysconf); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def check_memory(size: Sequence[int], bytes_per_voxel: int, name: str) -> None:
    """Refuse an image whose voxels (file copy + float32 copy) exceed the voxel cap or the memory budget."""
    voxels = math.prod(int(s) for s in size)
    needed = voxels * (bytes_per_voxel + FLOAT32_BYTES)
    shape = " x ".join(str(int(s)) for s in size)
    cap = max_voxels()
    if voxels > cap:
        raise InputImageError(f"{name} declares {shape} = {voxels:,} voxels, more than the limit of {cap:,} "
                              f"(set {MAX_VOXELS_ENV} to raise it)")
    available = available_memory()
    if available is not None and needed > MEMORY_FRACTION * available:
        raise InputImageError(f"{name} declares {shape} voxels needing {_gb(needed)} to read, more than "
                              f"{MEMORY_FRACTION:.0%} of the available memory ({_gb(available)})")


def _fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.6g}" for v in values)


def check_geometry(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float],
                   name: str) -> None:
    """Refuse absurd spacing (mm), a non-finite origin (mm) or a non-orthonormal direction (row-major 3x3)."""
    lo, hi = SPACING_RANGE_MM
    if not all(math.isfinite(s) and lo <= s <= hi for s in spacing):
        raise InputImageError(f"{name} has voxel spacing ({_fmt(spacing)}) mm: each must be a number "
                              f"between {lo:g} and {hi:g} mm")
    if not all(math.isfinite(o) and abs(o) <= MAX_ORIGIN_MM for o in origin):
        raise InputImageError(f"{name} has origin ({_fmt(origin)}) mm: not a finite position within "
                              f"{MAX_ORIGIN_MM:g} mm")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.isfinite(matrix).all():
        raise InputImageError(f"{name} has a direction matrix with NaN or infinite entries ({_fmt(direction)})")
    error = float(np.abs(matrix.T @ matrix - np.eye(3)).max())
    if error > ORTHONORMAL_TOLERANCE:
        raise InputImageError(f"{name} has a non-orthonormal (sheared or scaled) direction matrix "
                              f"({_fmt(direction)}; |DᵀD - I| = {error:.3g}): no output format can store it "
                              "unchanged; resample it onto an orthonormal grid first")


def check_grid(grid: Grid, name: str) -> None:
    """check_geometry on a 3D (or 4D with one volume) image or header; other dimensions are left to the
    caller's dimension check."""
    spacing, origin, direction = grid.GetSpacing(), grid.GetOrigin(), grid.GetDirection()
    dim = len(spacing)
    if dim == 4:
        spacing, origin = spacing[:3], origin[:3]
        direction = [direction[4 * r + c] for r in range(3) for c in range(3)]
    elif dim != 3:
        return
    check_geometry(spacing, origin, direction, name)


def read_header(path: str | os.PathLike, name: str | None = None) -> sitk.ImageFileReader:
    """Read ``path``'s header only, check geometry and memory; return the reader, ready to ``Execute()``."""
    name = name or str(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputImageError(f"Cannot read {name}: not a readable image ({last_line(exc)})") from exc
    bytes_per_voxel = reader.GetNumberOfComponents() * component_bytes(reader.GetPixelID())
    check_memory(reader.GetSize(), bytes_per_voxel, name)
    check_grid(reader, name)
    return reader


def component_bytes(pixel_id: int) -> int:
    """Bytes of one component of a SimpleITK pixel type (8 when unknown, the widest scalar)."""
    probe = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
             sitk.sitkInt32: 4, sitk.sitkFloat32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat64: 8}
    return probe.get(pixel_id, 8)


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's warnings on stderr (this module turns what matters into errors or notes)."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def last_line(exc: BaseException) -> str:
    """The last non-empty line of an ITK error (its message; the rest is a C++ location)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown reason"


def describe_grid(grid: Grid) -> str:
    """One line: size, spacing (mm), origin (mm), direction (row-major) of a 3D grid."""
    return (f"size {' x '.join(str(s) for s in grid.GetSize())}, spacing ({_fmt(grid.GetSpacing())}) mm, "
            f"origin ({_fmt(grid.GetOrigin())}) mm, direction ({_fmt(np.round(grid.GetDirection(), 6))})")


def same_grid(a: Grid, b: Grid) -> bool:
    """Same voxel grid up to storage rounding: equal size, spacing within 1e-4 relative, origin within
    1 % of the smallest voxel, direction entries within 1e-4."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    spacing_a, spacing_b = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    if not np.allclose(spacing_a, spacing_b, rtol=1e-4, atol=1e-6):
        return False
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=0.01 * float(spacing_a.min())):
        return False
    return bool(np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-4))
