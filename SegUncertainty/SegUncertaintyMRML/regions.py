"""Connected flagged regions, their ordering for review, and centring the slice views on one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

ORDERS = ("largest", "most_uncertain")


@dataclass(frozen=True)
class Region:
    """One connected flagged region (face-connected, as Slicer's Islands effect).

    label: its value in the label array from find_regions; centre_ras: centroid in RAS (mm), which can lie
    outside a curved region; focus_ras: the region's voxel nearest the centroid, where navigation goes;
    max/mean_uncertainty: over its voxels.
    """

    label: int
    voxels: int
    volume_ml: float
    max_uncertainty: float
    mean_uncertainty: float
    centre_ras: tuple[float, float, float]
    focus_ras: tuple[float, float, float]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected (6-neighbour) components of a (k, j, i) mask: int32 labels 1..n (0 outside) and n.

    Uses VTK's vtkImageConnectivityFilter, as Slicer's Islands effect does (in Slicer and slicer-core
    alike); it has no corner or edge connectivity, so voxels touching only there are separate regions.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.reshape(-1), deep=0,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    connectivity = vtk.vtkImageConnectivityFilter()
    connectivity.SetInputData(image)
    connectivity.SetScalarRange(1, 1)
    connectivity.SetExtractionModeToAllRegions()
    connectivity.SetLabelModeToSizeRank()
    connectivity.SetLabelScalarTypeToInt()
    connectivity.Update()
    labels = numpy_support.vtk_to_numpy(connectivity.GetOutput().GetPointData().GetScalars())
    return labels.reshape(mask.shape).astype(np.int32, copy=False), connectivity.GetNumberOfExtractedRegions()


def find_regions(mask: np.ndarray, values: np.ndarray, ijk_to_ras: np.ndarray, voxel_ml: float,
                 order: str = "largest", min_voxels: int = 1) -> tuple[np.ndarray, list[Region]]:
    """Connected regions of ``mask`` ordered for review: largest first, or highest maximum uncertainty first.

    Returns the label array and the regions (regions under ``min_voxels`` dropped).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}")
    labels, n = label_components(mask)
    if n == 0:
        return labels, []
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    ids = flat[where]
    vals = values.reshape(-1)[where].astype(np.float64)
    counts = np.bincount(ids, minlength=n + 1)
    sums = np.bincount(ids, weights=vals, minlength=n + 1)
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, ids, vals)
    k, j, i = np.unravel_index(where, labels.shape)
    centre_ijk = np.stack([np.bincount(ids, weights=c, minlength=n + 1) for c in (i, j, k)], 1)
    centre_ijk = centre_ijk[1:] / counts[1:, None]
    centre_ras = (np.c_[centre_ijk, np.ones(n)] @ ijk_to_ras.T)[:, :3]
    voxel_ras = (np.c_[i, j, k, np.ones(i.size)] @ ijk_to_ras.T)[:, :3]
    distance = ((voxel_ras - centre_ras[ids - 1]) ** 2).sum(axis=1)
    order_in_region = np.lexsort((distance, ids))  # by region, nearest first
    first = order_in_region[np.r_[True, np.diff(ids[order_in_region]) != 0]]
    focus_ras = np.empty((n + 1, 3))
    focus_ras[ids[first]] = voxel_ras[first]
    regions = [Region(label=r, voxels=int(counts[r]), volume_ml=float(counts[r] * voxel_ml),
                      max_uncertainty=float(maxima[r]), mean_uncertainty=float(sums[r] / counts[r]),
                      centre_ras=tuple(float(x) for x in centre_ras[r - 1]),
                      focus_ras=tuple(float(x) for x in focus_ras[r]))
               for r in range(1, n + 1) if counts[r] >= min_voxels]
    key = (lambda r: (-r.voxels, -r.max_uncertainty)) if order == "largest" else \
        (lambda r: (-r.max_uncertainty, -r.voxels))
    return labels, sorted(regions, key=key)


def centre_views_on(scene, ras) -> None:
    """Move every slice view so that it passes through ``ras`` and has it at its centre."""
    for slice_node in slicer.util.getNodesByClass("vtkMRMLSliceNode", scene):
        slice_node.JumpSliceByCentering(*[float(x) for x in ras])


class RegionNavigator:
    """Steps through regions (next / previous, wrapping) and keeps which were marked reviewed."""

    def __init__(self, regions: list[Region], reviewed: set[int] | None = None):
        self.regions = regions
        self.reviewed: set[int] = set(reviewed or ())
        self.index = -1

    @property
    def current(self) -> Region | None:
        return self.regions[self.index] if 0 <= self.index < len(self.regions) else None

    def step(self, direction: int = 1) -> Region | None:
        """The next (direction=1) or previous (-1) region, wrapping around; None when there are none."""
        if not self.regions:
            return None
        self.index = (self.index + direction) % len(self.regions) if self.index >= 0 else \
            (0 if direction > 0 else len(self.regions) - 1)
        return self.current

    def mark_reviewed(self, region: Region | None = None) -> None:
        region = region or self.current
        if region is not None:
            self.reviewed.add(region.label)

    @property
    def remaining(self) -> int:
        """Regions not yet marked reviewed."""
        return sum(r.label not in self.reviewed for r in self.regions)
