"""Geometry and intensity preprocessing: input grid <-> the model's grid (spacing, orientation).

The model grid is axis-aligned in the card's orientation (e.g. RAS), has the card's spacing and covers
the input's whole physical extent. Outputs are resampled back onto the input's exact grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..models.card import ModelCard


def orientation_direction(code: str) -> np.ndarray:
    """3x3 direction matrix (LPS world) whose columns point along ``code`` (e.g. "RAS", "LPS")."""
    axes = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    if len(code) != 3 or any(c not in axes for c in code) or len({axes[c][0] for c in code}) != 3:
        raise ValueError(f"Invalid orientation code {code!r}")
    direction = np.zeros((3, 3))
    for column, letter in enumerate(code):
        row, sign = axes[letter]
        direction[row, column] = sign
    return direction


def model_grid(image: sitk.Image, spacing_mm, orientation: str) -> sitk.Image:
    """An empty float32 image: the model's grid covering ``image``'s physical extent."""
    direction = orientation_direction(orientation)
    size = np.array(image.GetSize())
    corners = [[float(i), float(j), float(k)]
               for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    world = np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in corners])
    local = world @ direction  # coordinates along the new axes
    spacing = np.asarray(spacing_mm, dtype=float)
    lo, hi = local.min(0), local.max(0)
    new_size = np.maximum(np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1, 1)
    origin = direction @ lo
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def resample_like(image: sitk.Image, reference: sitk.Image, linear: bool = True, default: float = 0.0):
    """``image`` resampled onto ``reference``'s grid (linear or nearest neighbour)."""
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())


def normalize_intensity(array: np.ndarray, settings: dict) -> np.ndarray:
    """Intensity normalization named by the card: percentile -> [0, 1], zscore, CT window, or none."""
    method = settings.get("method", "none")
    array = array.astype(np.float32, copy=False)
    if method == "percentile":
        lo, hi = np.percentile(array, [settings.get("lower", 0.5), settings.get("upper", 99.5)])
        hi = hi if hi > lo else lo + 1.0
        return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if method == "zscore":
        mask = array > array.min() if settings.get("nonzero", False) else np.ones(array.shape, bool)
        values = array[mask]
        std = float(values.std()) or 1.0
        return ((array - float(values.mean())) / std).astype(np.float32)
    if method == "window":
        lo, hi = float(settings["lower"]), float(settings["upper"])
        return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    return array


def to_model_space(image: sitk.Image, card: ModelCard) -> tuple[np.ndarray, sitk.Image]:
    """Resample and normalize ``image`` as the card says; return the (z, y, x) float32 array and grid."""
    grid = model_grid(image, card.spacing_mm, card.orientation)
    # pad with the minimum so regions outside the scan look like air, not like a mid-grey
    minimum = float(sitk.GetArrayViewFromImage(image).min())
    resampled = resample_like(image, grid, linear=True, default=minimum)
    array = normalize_intensity(sitk.GetArrayFromImage(resampled), card.intensity)
    return array, grid


def array_on_grid(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array as an image with ``grid``'s geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def to_input_space(array: np.ndarray, grid: sitk.Image, reference: sitk.Image, default: float = 0.0):
    """A model-grid (z, y, x) float array resampled (linear) onto the input's exact grid."""
    image = array_on_grid(np.ascontiguousarray(array, dtype=np.float32), grid)
    return resample_like(image, reference, linear=True, default=default)
