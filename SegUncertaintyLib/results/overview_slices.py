"""The overview's slices: three orthogonal planes through the segmentation, cut as Slicer shows them.

Radiological convention (Slicer's default slice views): axial and coronal views put the patient's left on
the image's right, the sagittal view puts anterior on the left. An oblique grid is shown along its voxel
axes nearest to the anatomical ones. Numpy only: the drawing (matplotlib) is in :mod:`.overview`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# World axes of ITK's LPS space: index, and the letter of each direction (+, -)
LETTERS = {0: ("L", "R"), 1: ("P", "A"), 2: ("S", "I")}
# (plane, normal world axis, screen right, screen up) as (world axis, sign): Slicer's default slice views
VIEWS = (("Axial", 2, (0, 1), (1, -1)), ("Coronal", 1, (0, 1), (2, 1)), ("Sagittal", 0, (1, 1), (2, 1)))
MAP_NAMES = ("entropy", "mutual_information", "variance")  # the map columns, in this order


@dataclass(frozen=True)
class View:
    """How one plane is cut from a (z, y, x) array and turned to screen orientation."""

    name: str
    world_normal: int  # LPS axis across the plane
    normal: int  # array axis cut at the slice
    rows: int  # array axis running up the screen
    columns: int  # array axis running right
    flip_rows: bool
    flip_columns: bool
    letters: tuple[str, str, str, str]  # right, left, top, bottom
    aspect: float  # height / width of a pixel

    def cut(self, volume: np.ndarray, centre: tuple[int, int, int]) -> np.ndarray:
        """The slice through ``centre`` as a (rows, columns) array, row 0 at the bottom."""
        plane = np.take(volume, centre[self.normal], axis=self.normal)
        kept = [a for a in range(3) if a != self.normal]
        plane = plane if kept.index(self.rows) == 0 else plane.T
        plane = plane[::-1] if self.flip_rows else plane
        return plane[:, ::-1] if self.flip_columns else plane


def views(image: sitk.Image) -> list[View]:
    """The three views of ``image``'s grid: for each voxel axis, the world axis it is nearest to."""
    direction = np.array(image.GetDirection()).reshape(3, 3)  # columns: voxel axes x, y, z in LPS
    spacing = image.GetSpacing()
    world_of = {}  # world axis -> (array axis, sign of that array axis along it)
    for voxel_axis in range(3):
        world = int(np.argmax(np.abs(direction[:, voxel_axis])))
        world_of[world] = (2 - voxel_axis, 1 if direction[world, voxel_axis] > 0 else -1)
    if len(world_of) != 3:  # a degenerate oblique grid: show the array axes as stored
        world_of = {w: (2 - w, 1) for w in range(3)}
    out = []
    for name, normal, (right, right_sign), (up, up_sign) in VIEWS:
        (columns, column_sign), (rows, row_sign) = world_of[right], world_of[up]
        letter = {axis: LETTERS[axis] if sign > 0 else LETTERS[axis][::-1] for axis, sign in
                  ((right, right_sign), (up, up_sign))}
        out.append(View(name, normal, world_of[normal][0], rows, columns, row_sign != up_sign,
                        column_sign != right_sign, (*letter[right], *letter[up]),
                        spacing[2 - rows] / spacing[2 - columns]))
    return out


def centre_of(mask: np.ndarray) -> tuple[int, ...]:
    """The (z, y, x) index of the mask's centroid (the volume's centre when empty), from per-axis counts."""
    total = int(mask.sum())
    if not total:
        return tuple(n // 2 for n in mask.shape)
    axes = range(mask.ndim)
    return tuple(int(np.dot(np.arange(n), mask.sum(axis=tuple(a for a in axes if a != i))) / total)
                 for i, n in enumerate(mask.shape))


def slice_position(image: sitk.Image, centre: tuple[int, int, int], view: View) -> str:
    """Slicer's slice offset of the view through ``centre``: the RAS coordinate along the normal, mm."""
    lps = image.TransformIndexToPhysicalPoint([int(i) for i in reversed(centre)])
    ras = (-lps[0], -lps[1], lps[2])[view.world_normal] + 0.0  # no "-0.0"
    return f"{'RAS'[view.world_normal]} {ras:.1f} mm"


@dataclass(frozen=True)
class Row:
    """One view's panels: the image and label slices, and each map column's slice (all (rows, columns))."""

    view: View
    position: str  # Slicer's slice offset, e.g. "S 12.0 mm"
    image: np.ndarray
    labels: np.ndarray
    maps: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class OverviewRequest:
    """Everything the drawing needs (small: three slices per column), picklable for the drawing process.

    ``maps``: (name, its maximum over the volume) per map column; ``labels``: value -> class name (0 is
    background); ``terminology``: the card's, for each class's colour."""

    rows: tuple[Row, ...]
    maps: tuple[tuple[str, float], ...]
    path: Path
    title: str
    labels: Mapping[int, str]
    terminology: Mapping | None = None


def overview_request(outputs, path: Path, title: str, labels: Mapping[int, str],
                     terminology: Mapping | None = None) -> OverviewRequest:
    """The slices of a run's model-grid image, labels and maps through the segmentation's centroid. The
    model grid is drawn: for card models it is axis-aligned, so the slices are true planes."""
    image = outputs.model_grid_image
    array = sitk.GetArrayViewFromImage(image)
    labels_volume = outputs.model_grid_labels
    centre = centre_of(labels_volume > 0)
    grid_views = views(image)
    maps, slices = [], []  # one map volume in memory at a time (they may be files)
    for name in MAP_NAMES:
        if name in outputs.model_grid_maps:
            volume = outputs.model_grid_maps[name]
            maps.append((name, max(float(volume.max()), 1e-6)))
            slices.append([v.cut(volume, centre).copy() for v in grid_views])
            del volume
    rows = tuple(Row(view, slice_position(image, centre, view), view.cut(array, centre).copy(),
                     view.cut(labels_volume, centre).copy(), tuple(s[i] for s in slices))
                 for i, view in enumerate(grid_views))
    return OverviewRequest(rows, tuple(maps), Path(path), title, dict(labels), terminology)
