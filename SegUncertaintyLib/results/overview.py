"""The overview PNG, drawn with matplotlib from the slices of :mod:`.overview_slices`.

Every panel carries its orientation letters, every row its plane and slice position (RAS mm, as Slicer's
slice offset), every map column its unit on the colour bar, and a legend gives each class's colour.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # not pyplot: no global figure state, no GUI backend, 0.1 s less to import
from matplotlib.lines import Line2D

from .overview_slices import OverviewRequest, View

MAP_UNITS = {
    "entropy": "normalized entropy H / ln C (0-1)",
    "mutual_information": "mutual information / ln C (0-1)",
    "variance": "max. class variance of p (0-0.25)",
}
PALETTE = matplotlib.colormaps["tab10"].colors


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


def draw_overview(request: OverviewRequest) -> None:
    """Write the figure to ``request.path`` (through a temporary file beside it)."""
    classes = class_colours(request.labels, request.terminology)
    columns = 1 + len(request.maps)
    fig = Figure(figsize=(3.0 * columns + 0.6, 10.2))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, columns, height_ratios=[1, 1, 1, 0.06], hspace=0.25, wspace=0.08,
                            left=0.07, right=0.99, top=0.9, bottom=0.07)
    for row_index, row in enumerate(request.rows):
        view = row.view
        panels = [fig.add_subplot(grid[row_index, col]) for col in range(columns)]
        for col, ax in enumerate(panels):
            ax.imshow(row.image, cmap="gray", origin="lower", aspect=view.aspect, interpolation="nearest")
            if col == 0:
                for value, (_, colour) in classes.items():
                    if (row.labels == value).any():
                        ax.contour(row.labels == value, levels=[0.5], colors=[colour], linewidths=0.9,
                                   origin="lower")
            else:
                name, vmax = request.maps[col - 1]
                heat = ax.imshow(np.ma.masked_less(row.maps[col - 1], 0.02 * vmax), cmap="inferno", origin="lower",
                                 aspect=view.aspect, vmin=0, vmax=vmax, alpha=0.85, interpolation="nearest")
                if row_index == 0:
                    ax.set_title(name.replace("_", " "), fontsize=10)
                    bar = fig.colorbar(heat, cax=fig.add_subplot(grid[3, col]), orientation="horizontal")
                    bar.set_label(MAP_UNITS.get(name, name), fontsize=8)
                    bar.ax.tick_params(labelsize=7)
            _letters(ax, view)
            ax.set_xticks([])
            ax.set_yticks([])
        panels[0].set_ylabel(f"{view.name}\n{row.position}", fontsize=9)
        if row_index == 0:
            panels[0].set_title("image + segmentation", fontsize=10)
    handles = [Line2D([], [], color=colour, lw=2, label=name) for name, colour in classes.values()]
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=min(len(handles), 6),
                   fontsize=8, frameon=False, title="segmentation contours", title_fontsize=8)
    fig.suptitle(f"{request.title}\nradiological convention (patient's left on the image's right); maps below 2 % "
                 "of their maximum transparent", fontsize=9)
    tmp = request.path.with_name(f".{request.path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(request.path)
