"""An overview PNG: three orthogonal slices through the segmentation, with class contours and heat maps.

Drawn as Slicer draws its slice views (radiological convention): axial and coronal views put the
patient's left on the image's right, the sagittal view puts anterior on the left; every panel carries its
orientation letters, every row its plane and slice position (RAS mm, as Slicer's slice offset), every map
column its unit on the colour bar, and a legend gives each class's colour. An oblique grid is shown along
its voxel axes nearest to the anatomical ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # not pyplot: no global figure state, no GUI backend, 0.1 s less to import
from matplotlib.lines import Line2D

# World axes of ITK's LPS space: index, and the letter of each direction (+, -)
LETTERS = {0: ("L", "R"), 1: ("P", "A"), 2: ("S", "I")}
# (plane, normal world axis, screen right, screen up) as (world axis, sign): Slicer's default slice views
VIEWS = (("Axial", 2, (0, 1), (1, -1)), ("Coronal", 1, (0, 1), (2, 1)), ("Sagittal", 0, (1, 1), (2, 1)))
MAP_UNITS = {
    "entropy": "normalized entropy H / ln C (0-1)",
    "mutual_information": "mutual information / ln C (0-1)",
    "variance": "max. class variance of p (0-0.25)",
}
PALETTE = matplotlib.colormaps["tab10"].colors


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


def _centre(mask: np.ndarray) -> tuple[int, ...]:
    """The (z, y, x) index of the mask's centroid (the volume's centre when empty), from per-axis counts."""
    total = int(mask.sum())
    if not total:
        return tuple(n // 2 for n in mask.shape)
    axes = range(mask.ndim)
    return tuple(int(np.dot(np.arange(n), mask.sum(axis=tuple(a for a in axes if a != i))) / total)
                 for i, n in enumerate(mask.shape))


def _position(image: sitk.Image, centre: tuple[int, int, int], view: View) -> str:
    """Slicer's slice offset of the view through ``centre``: the RAS coordinate along the normal, mm."""
    lps = image.TransformIndexToPhysicalPoint([int(i) for i in reversed(centre)])
    ras = (-lps[0], -lps[1], lps[2])[view.world_normal] + 0.0  # no "-0.0"
    return f"{'RAS'[view.world_normal]} {ras:.1f} mm"


def _letters(ax, view: View) -> None:
    style = {"color": "yellow", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
    right, left, top, bottom = view.letters
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def class_colours(names: Mapping[int, str], terminology: Mapping | None = None) -> dict[int, tuple[str, tuple]]:
    """value -> (name, RGB 0-1) for the foreground classes: the card's terminology colour, else tab10."""
    out = {}
    for i, (value, name) in enumerate(sorted((int(v), n) for v, n in names.items() if int(v) != 0)):
        colour = ((terminology or {}).get(str(value)) or {}).get("color")
        out[value] = (name, tuple(colour) if colour is not None else PALETTE[i % len(PALETTE)])
    return out


def save_overview(outputs, path: Path, title: str = "", classes: Mapping[int, tuple[str, tuple]] | None = None
                  ) -> None:
    """Write the figure to ``path``; ``classes``: value -> (name, RGB 0-1) (default: the scores' class
    names in label order with tab10 colours). The model grid is drawn: for card models it is axis-aligned,
    so the slices are true planes."""
    image = outputs.model_grid_image
    array = sitk.GetArrayViewFromImage(image)
    labels = outputs.model_grid_labels
    if classes is None:
        classes = class_colours(dict(enumerate(outputs.scores.get("classes", {}), start=1)))
    centre = _centre(labels > 0)
    grid_views = views(image)
    maps = []  # (name, its three slices, its maximum): one volume in memory at a time (they may be files)
    for name in ("entropy", "mutual_information", "variance"):
        if name in outputs.model_grid_maps:
            volume = outputs.model_grid_maps[name]
            maps.append((name, [v.cut(volume, centre).copy() for v in grid_views], max(float(volume.max()), 1e-6)))
            del volume
    columns = 1 + len(maps)
    fig = Figure(figsize=(3.0 * columns + 0.6, 10.2))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, columns, height_ratios=[1, 1, 1, 0.06], hspace=0.25, wspace=0.08,
                            left=0.07, right=0.99, top=0.9, bottom=0.07)
    for row, view in enumerate(grid_views):
        img, lab = view.cut(array, centre), view.cut(labels, centre)
        panels = [fig.add_subplot(grid[row, col]) for col in range(columns)]
        for col, ax in enumerate(panels):
            ax.imshow(img, cmap="gray", origin="lower", aspect=view.aspect, interpolation="nearest")
            if col == 0:
                for value, (_, colour) in classes.items():
                    if (lab == value).any():
                        ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=0.9, origin="lower")
            else:
                name, slices, vmax = maps[col - 1]
                heat = ax.imshow(np.ma.masked_less(slices[row], 0.02 * vmax), cmap="inferno", origin="lower",
                                 aspect=view.aspect, vmin=0, vmax=vmax, alpha=0.85, interpolation="nearest")
                if row == 0:
                    ax.set_title(name.replace("_", " "), fontsize=10)
                    bar = fig.colorbar(heat, cax=fig.add_subplot(grid[3, col]), orientation="horizontal")
                    bar.set_label(MAP_UNITS.get(name, name), fontsize=8)
                    bar.ax.tick_params(labelsize=7)
            _letters(ax, view)
            ax.set_xticks([])
            ax.set_yticks([])
        panels[0].set_ylabel(f"{view.name}\n{_position(image, centre, view)}", fontsize=9)
        if row == 0:
            panels[0].set_title("image + segmentation", fontsize=10)
    handles = [Line2D([], [], color=colour, lw=2, label=name) for name, colour in classes.values()]
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=min(len(handles), 6),
                   fontsize=8, frameon=False, title="segmentation contours", title_fontsize=8)
    fig.suptitle(f"{title}\nradiological convention (patient's left on the image's right); maps below 2 % of "
                 "their maximum transparent", fontsize=9)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
