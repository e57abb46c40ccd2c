"""Uncertainty maps as foreground layers over the input, with a built-in colormap and a color legend."""

from __future__ import annotations

import numpy as np
import slicer

# Slicer's file-based color tables (Colors module), by display name.
COLORMAPS = {
    "Inferno": "vtkMRMLColorTableNodeFileInferno.txt",
    "Viridis": "vtkMRMLColorTableNodeFileViridis.txt",
}
FALLBACK_COLORMAP = "vtkMRMLColorTableNodeIron"  # procedural, always present


def colormap_id(scene, name: str) -> str:
    """Node ID of the named colormap; Iron when the scene has no such table."""
    node_id = COLORMAPS.get(name, name)
    return node_id if scene.GetNodeByID(node_id) is not None else FALLBACK_COLORMAP


def style_map(map_node, colormap: str = "Inferno", transparent_below: float | None = None) -> None:
    """Color a map volume: fixed window from 0 to its maximum, values below ``transparent_below`` hidden.

    The default hides values under 5 % of the maximum, so near-certain voxels leave the input visible.
    """
    display = map_node.GetDisplayNode()
    if display is None:
        map_node.CreateDefaultDisplayNodes()
        display = map_node.GetDisplayNode()
    values = slicer.util.arrayFromVolume(map_node)
    top = float(np.nanmax(values)) if values.size else 1.0
    top = top if top > 0 else 1.0
    with slicer.util.NodeModify(display):
        display.SetAndObserveColorNodeID(colormap_id(map_node.GetScene(), colormap))
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, top)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(0.05 * top if transparent_below is None else transparent_below)
        display.SetUpperThreshold(max(top, 1.0) * 10.0)
        display.SetInterpolate(False)


def show_layers(scene, background, foreground=None, opacity: float = 0.5, label=None) -> None:
    """Show ``background`` with ``foreground`` over it in every slice view (composite nodes)."""
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode", scene):
        with slicer.util.NodeModify(composite):
            composite.SetBackgroundVolumeID(background.GetID() if background else None)
            composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            composite.SetForegroundOpacity(float(opacity))
            if label is not None:
                composite.SetLabelVolumeID(label.GetID())


def set_overlay_opacity(scene, opacity: float) -> None:
    """Foreground opacity (0-1) in every slice view."""
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode", scene):
        composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))


def add_color_legend(map_node, title: str):
    """A color legend for a map volume (Colors module), shown in the slice views; returns its node."""
    legend = slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(map_node)
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.2f")
    legend.SetVisibility(True)
    return legend


def show_only_legend(map_nodes, visible_node) -> None:
    """Show the color legend of ``visible_node`` and hide the others.

    Each legend node is marked modified even when its visibility does not change: the legend's
    displayable manager re-checks which layer shows the volume only then (a layer set by code, not by
    the slice controller, would otherwise leave the legend hidden).
    """
    for node in map_nodes:
        for i in range(node.GetNumberOfDisplayNodes()):
            display = node.GetNthDisplayNode(i)
            if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
                display.SetVisibility(node is visible_node)
                display.Modified()
