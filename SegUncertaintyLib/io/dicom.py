"""DICOM series folders: find every series (nested folders too), pick one explicitly, check its slices.

Rules:

- the folder and all its sub-folders are searched (a PACS export is patient/study/series/...); symbolic
  links to folders are not followed;
- several series: refused with the list (UID, description, files, size) unless ``series`` names one;
- a file with the DICOM preamble (``DICM`` at byte 128) that GDCM cannot read is refused by name, since
  GDCM would otherwise silently leave it out (``DICOMDIR`` excepted);
- the slices must share size, pixel spacing and orientation, lie along the slice normal (no gantry tilt),
  without duplicate positions, at uniform spacing: each gap within ``SPACING_TOLERANCE`` of the median
  (a missing slice is a gap of twice the median, and is refused);
- header geometry and memory go through header.check_geometry / check_memory before any pixel is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputImageError
from ..core.files import has_dicom_preamble
from .header import check_geometry, check_memory, component_bytes, last_line, quiet_itk

SERIES_UID_TAG = "0020|000e"
DESCRIPTION_TAG = "0008|103e"
SPACING_TOLERANCE = 0.05  # relative to the median slice gap
POSITION_TOLERANCE_MM = 0.01


@dataclass
class Series:
    uid: str
    files: list[str]
    description: str = ""

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)

    def describe(self) -> str:
        size = self.size_bytes
        text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
        return f"{self.uid} '{self.description}' ({len(self.files)} files, {text})"


def find_series(folder: Path, broken: list[str] | None = None) -> list[Series]:
    """Every series under ``folder`` (recursively), by UID; refuses unreadable DICOM files by name, or,
    given a ``broken`` list, appends their paths to it and lists the readable series (a cohort then fails
    the cases whose folders hold them, and only those)."""
    reader = sitk.ImageSeriesReader()
    by_uid: dict[str, list[str]] = {}
    grouped: set[str] = set()
    candidates: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if not filenames:
            continue
        candidates += [os.path.join(dirpath, f) for f in filenames if f.upper() != "DICOMDIR"]
        for uid in reader.GetGDCMSeriesIDs(dirpath):
            files = list(reader.GetGDCMSeriesFileNames(dirpath, uid))
            by_uid.setdefault(uid, []).extend(files)
            grouped.update(os.path.normpath(f) for f in files)
    unreadable = [f for f in candidates if os.path.normpath(f) not in grouped and has_dicom_preamble(f)]
    if unreadable and broken is not None:
        broken += unreadable
    elif unreadable:
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        raise InputImageError(f"Cannot read DICOM file {unreadable[0]}{more} in {folder}: truncated or corrupt "
                              "(it would be left out of its series)")
    series = [Series(uid, files) for uid, files in sorted(by_uid.items())]
    for s in series:
        first = _header(s.files[0])
        s.description = first.GetMetaData(DESCRIPTION_TAG).strip() if first.HasMetaDataKey(DESCRIPTION_TAG) else ""
    return series


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputImageError(f"Cannot read DICOM file {path}: {last_line(exc)}") from exc
    return reader


def choose_series(folder: Path, series: list[Series], uid: str | None) -> Series:
    """The series named ``uid``, or the only one; refuse with the list otherwise."""
    listing = "; ".join(s.describe() for s in series)
    if not series:
        raise InputImageError(f"No DICOM series found in folder {folder} (sub-folders included)")
    if uid is not None:
        for s in series:
            if s.uid == uid:
                return s
        raise InputImageError(f"No DICOM series {uid} in {folder}; it holds: {listing}")
    if len(series) > 1:
        raise InputImageError(f"{folder} holds {len(series)} DICOM series; choose one with --series UID: {listing}")
    return series[0]


def sorted_slices(series: Series, folder: Path) -> tuple[list[str], float]:
    """The series' files ordered along the slice normal, and the slice gap (mm); refuse broken geometry."""
    headers = [_header(f) for f in series.files]
    first = headers[0]
    name = f"DICOM series {series.uid} in {folder}"
    if len(headers) == 1:
        return series.files, float(first.GetSpacing()[2])
    for f, h in zip(series.files, headers, strict=True):
        if h.GetSize()[:2] != first.GetSize()[:2] or h.GetSize()[2] != 1:
            raise InputImageError(f"{name}: slice {f} has size {h.GetSize()}, the first {first.GetSize()}")
        if not np.allclose(h.GetDirection(), first.GetDirection(), atol=1e-4):
            raise InputImageError(f"{name}: slice {f} has another orientation than the first slice")
        if not np.allclose(h.GetSpacing()[:2], first.GetSpacing()[:2], rtol=1e-4):
            raise InputImageError(f"{name}: slice {f} has pixel spacing {h.GetSpacing()[:2]}, the first "
                                  f"{first.GetSpacing()[:2]}")
    direction = np.array(first.GetDirection()).reshape(3, 3)
    check_geometry(first.GetSpacing(), first.GetOrigin(), direction.flatten().tolist(), name)
    positions = np.array([h.GetOrigin() for h in headers])
    along = positions @ direction[:, 2]
    order = np.argsort(along)
    gaps = np.diff(along[order])
    if np.any(gaps < POSITION_TOLERANCE_MM):
        i = int(np.argmin(gaps))
        raise InputImageError(f"{name}: slices {series.files[order[i]]} and {series.files[order[i + 1]]} "
                              "are at the same position (duplicate slice)")
    median = float(np.median(gaps))
    deviation = np.abs(gaps - median)
    if deviation.max() > max(SPACING_TOLERANCE * median, POSITION_TOLERANCE_MM):
        i = int(np.argmax(deviation))
        raise InputImageError(f"{name}: slice gap of {gaps[i]:.4g} mm after slice {i + 1} of {len(gaps) + 1} "
                              f"where the median is {median:.4g} mm (missing slice or non-uniform spacing)")
    steps = np.diff(positions[order], axis=0)
    in_plane = steps - np.outer(steps @ direction[:, 2], direction[:, 2])
    if np.linalg.norm(in_plane, axis=1).max() > max(SPACING_TOLERANCE * median, POSITION_TOLERANCE_MM):
        raise InputImageError(f"{name}: slices are not stacked along their normal (gantry tilt or sheared "
                              "series); resample it onto an orthogonal grid first")
    return [series.files[i] for i in order], median


def series_slice_files(folder: Path, uid: str | None = None) -> list[str]:
    """The files of the series ``read_dicom_folder(folder, uid)`` reads, in its slice (z) order."""
    return sorted_slices(choose_series(folder, find_series(folder), uid), folder)[0]


def read_dicom_folder(folder: Path, uid: str | None = None) -> sitk.Image:
    """The chosen series as one image (pixel type as stored), its series UID in metadata ``0020|000e``."""
    with quiet_itk():
        return _read_series(folder, uid)


def _read_series(folder: Path, uid: str | None) -> sitk.Image:
    series = choose_series(folder, find_series(folder), uid)
    files, gap = sorted_slices(series, folder)
    first = _header(files[0])
    size = (*first.GetSize()[:2], len(files) * first.GetSize()[2])
    check_memory(size, first.GetNumberOfComponents() * component_bytes(first.GetPixelID()),
                 f"DICOM series {series.uid} in {folder}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"Cannot read DICOM series {series.uid} in {folder}: {last_line(exc)}") from exc
    if len(files) > 1 and not np.isclose(image.GetSpacing()[2], gap, rtol=SPACING_TOLERANCE):
        raise InputImageError(f"DICOM series {series.uid} in {folder}: slice spacing {image.GetSpacing()[2]:.4g} mm "
                              f"read, {gap:.4g} mm between slice positions")
    image.SetMetaData(SERIES_UID_TAG, series.uid)
    return image
