"""A real MRML scene outside the Slicer application, through PyPI's slicer-core.

Slicer's application creates the application logic, the module logics, the default color tables and
the slice views' logics at start-up. ``new_scene`` does the same by hand, so that the module's MRML glue
(SegUncertainty/SegUncertaintyMRML) runs against real nodes, logics and storage. Stood in for, because
slicer-core does not ship them: the ``slicer.modules.<name>.logic()`` lookups, and Slicer's color files
for Inferno and Viridis (written from matplotlib's tables into a share/ColorFiles folder, which the real
color logic then loads under Slicer's own node IDs).
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no X

MODULE_DIR = Path(__file__).resolve().parents[2] / "SegUncertainty"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import slicer  # noqa: E402
import vtk  # noqa: E402

# Module logics that the glue and slicer.util's helpers look up, by Slicer's module name.
MODULE_LOGICS = {
    "Colors": "vtkSlicerColorLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Terminologies": "vtkSlicerTerminologiesModuleLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Tables": "vtkSlicerTablesLogic",
    "Plots": "vtkSlicerPlotsLogic",
}
FILE_COLORMAPS = ("Inferno", "Viridis")
SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


def write_color_files(home: Path) -> None:
    """Slicer's color-file format ("index name R G B A", 0-255) for FILE_COLORMAPS, from matplotlib."""
    from matplotlib import colormaps

    folder = home / "share" / "ColorFiles"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILE_COLORMAPS:
        rgb = np.round(colormaps[name.lower()](np.linspace(0, 1, 256))[:, :3] * 255).astype(int)
        lines = [f"{i} {name}{i} {r} {g} {b} 255\n" for i, (r, g, b) in enumerate(rgb)]
        (folder / f"{name}.txt").write_text(f"# Color table file {name}\n" + "".join(lines))
    # Labelmap volumes default to Slicer's GenericColors table; a small stand-in (tab10) avoids warnings.
    tab10 = np.round(np.array(colormaps["tab10"].colors) * 255).astype(int)
    generic = ["0 background 0 0 0 0\n"]
    generic += [f"{i + 1} label{i + 1} {r} {g} {b} 255\n" for i, (r, g, b) in enumerate(tab10)]
    (folder / "GenericColors.txt").write_text("# Color table file GenericColors\n" + "".join(generic))


def new_scene(home: Path | None = None):
    """A scene set up like Slicer's main scene, installed as ``slicer.mrmlScene``; returns the scene.

    ``slicer.app_logic`` holds the application logic; its slice logics drive the Red, Yellow and Green
    slice nodes.
    """
    home = Path(home or tempfile.mkdtemp(prefix="slicer_home_"))
    write_color_files(home)
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.SetHomeDirectory(str(home))
    app.SetShareDirectory("share")
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app)
    modules = types.SimpleNamespace()
    vtk.vtkObject.GlobalWarningDisplayOff()  # slicer-core ships no terminology files: expected errors
    for name, class_name in MODULE_LOGICS.items():
        logic = getattr(slicer, class_name)()
        logic.SetMRMLApplicationLogic(app)  # before the scene
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        setattr(modules, name.lower(), types.SimpleNamespace(logic=lambda logic=logic: logic))
    vtk.vtkObject.GlobalWarningDisplayOn()
    app.SetColorLogic(modules.colors.logic())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    for view, orientation in SLICE_VIEWS:
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLApplicationLogic(app)
        app.GetSliceLogics().AddItem(slice_logic)
        slice_logic.SetMRMLScene(scene)
        slice_logic.AddSliceNode(view).SetOrientation(orientation)
    slicer.mrmlScene = scene
    slicer.modules = modules
    slicer.app_logic = app
    return scene


def slice_logic(view: str = "Red"):
    """The slice logic of a view created by ``new_scene``."""
    return slicer.app_logic.GetSliceLogic(slicer.mrmlScene.GetNodeByID(f"vtkMRMLSliceNode{view}"))
