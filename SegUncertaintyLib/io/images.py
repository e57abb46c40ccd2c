"""Reading, validating and atomically writing 3D images (SimpleITK).

Every read checks the header first (io.header: geometry, voxel count, memory), then the voxels.

Arrays follow SimpleITK's order: ``sitk.GetArrayFromImage`` gives (z, y, x).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputImageError, OutputError, UsageError
from ..core.files import write_text_atomic
from .dicom import SERIES_UID_TAG, read_dicom_folder
from .header import check_grid, last_line, quiet_itk, read_header
from .nifticheck import check_nifti_complete

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_suffix(path: str | os.PathLike) -> str:
    """The image extension of ``path`` (``.nii.gz`` counts as one suffix)."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def read_volume(path: str | os.PathLike, name: str | None = None) -> sitk.Image:
    """Read an image file as stored (any voxel type) once its header passed header.read_header: geometry,
    voxel count and memory are checked before any voxel is allocated; raise InputImageError otherwise."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise InputImageError(f"Image not found: {name}" if not path.exists() else f"{name} is not a file")
    if image_suffix(path) not in (".nii", ".nii.gz"):
        return _read_with_itk(path, name)
    # The NIfTI check's error wins over ITK's (ITK fills truncated files with zeros and rejects sheared sforms
    # vaguely). It decompresses the file once more than ITK: both at once, as zlib and ITK release the GIL
    # (0.16 s instead of 0.30 s for a 12 M-voxel float .nii.gz).
    with ThreadPoolExecutor(max_workers=1) as pool:
        check = pool.submit(check_nifti_complete, path)
        try:
            return _read_with_itk(path, name)
        finally:
            check.result()  # its error replaces ITK's or the image


def _read_with_itk(path: Path, name: str) -> sitk.Image:
    with quiet_itk():
        reader = read_header(path, name)
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise InputImageError(f"Cannot read {name}: not a readable image or truncated file "
                                  f"({last_line(exc)})") from exc


def read_image(path: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read a scalar 3D image file or DICOM folder as float32 and check it is usable (InputImageError otherwise).

    ``series``: the SeriesInstanceUID to read from a DICOM folder holding several (see io.dicom).
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"Input image not found: {path}")
    if path.is_dir():
        raw = read_dicom_folder(path, series)
        image = validate_image(raw, str(path))
        image.SetMetaData(SERIES_UID_TAG, raw.GetMetaData(SERIES_UID_TAG))  # recorded in the manifest
        return image
    if series is not None:
        raise UsageError(f"--series applies to DICOM folders; {path} is a file")
    return validate_image(read_volume(path), str(path))


def validate_image(image: sitk.Image, name: str = "input") -> sitk.Image:
    """Return ``image`` as float32 if it is a finite, non-constant scalar 3D volume on a sane grid (see
    io.header.check_geometry); raise InputImageError otherwise."""
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar (grey-level) 3D volume is needed"
        )
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InputImageError(f"{name} is {dim}D (size {image.GetSize()}); a 3D volume is needed")
    check_grid(image, name)
    size = image.GetSize()
    if min(size) < 2:
        raise InputImageError(f"{name} has size {size}: at least 2 voxels along each axis are needed")
    if image.GetPixelID() != sitk.sitkFloat32:  # Cast copies even to the same type: a CT's size is 300 MB
        image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputImageError(f"{name} contains {bad} NaN or infinite voxels; fix or mask them first")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise InputImageError(f"{name} is constant (every voxel = {lo:g}): nothing to segment")
    return image


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> None:
    """Write ``image`` to ``path``; the format follows the extension."""
    try:
        sitk.WriteImage(image, str(path), compress)
    except RuntimeError as exc:
        raise OutputError(f"Cannot write {path}: {exc}") from exc


def write_json(data: dict, path: Path) -> None:
    """Write ``data`` as indented JSON, whole or not at all (core.files.write_text_atomic)."""
    try:
        write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}") from exc
