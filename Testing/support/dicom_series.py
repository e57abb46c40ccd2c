"""Write real DICOM series with SimpleITK's GDCM writer (one file per slice), as the tests' inputs."""

from __future__ import annotations

import contextlib
import locale
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@contextlib.contextmanager
def _keep_locale() -> Iterator[None]:
    """GDCM's writer sets the C library's locale to "C" and leaves it so (Python's open() would then
    default to ASCII in every later test): restore it."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_series(folder: Path, array: np.ndarray, uid: str, description: str = "T1",
                 spacing=(0.8, 0.9, 2.0), origin=(-10.0, -20.0, 30.0), direction=None, prefix: str = "IM",
                 skip=(), positions=None, modality: str = "MR",
                 frame_of_reference: str = "1.2.826.0.1.3680043.2.1125.9.77") -> list[Path]:
    """``array`` (z, y, x) int16 as one file per slice in ``folder``; returns the files written.

    Slice k sits at origin + k * spacing[2] * normal (or at ``positions[k]``); ``skip`` leaves slices out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(array.shape[0]):
        if k in skip:
            continue
        position = np.asarray(origin) + k * spacing[2] * d[:, 2] if positions is None else np.asarray(positions[k])
        image = sitk.JoinSeries(sitk.GetImageFromArray(array[k].astype(np.int16)))
        image.SetSpacing(spacing)
        image.SetOrigin(position.tolist())
        image.SetDirection(d.flatten().tolist())
        tags = {
            "0008|0060": modality, "0020|0052": frame_of_reference,
            "0010|0020": "PATIENT1", "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": uid, "0008|103e": description, "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in [*d[:, 0], *d[:, 1]]),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}", "0018|0050": f"{spacing[2]:.6f}",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"{prefix}{k:04d}.dcm"
        writer.SetFileName(str(path))
        with _keep_locale():
            writer.Execute(image)
        files.append(path)
    return files


def volume(shape=(6, 12, 10), seed: int = 0) -> np.ndarray:
    """A non-constant int16 test volume (z, y, x): each slice's values encode its index."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 100, shape) + 1000 * np.arange(shape[0])[:, None, None]).astype(np.int16)
