"""Offscreen pictures of a Slicer slice view (Red, Yellow, Green) of a ``slicer_headless`` scene.

Slicer >= 5.10 draws the slice image itself in Qt/CTK (vtkLightBoxRendererManager), which slicer-core lacks;
here the slice logic's blended RGBA output goes to a vtkImageMapper background actor. Segment outlines and
fills, color legends and the other overlays come from Slicer's real displayable managers. Rendering is
offscreen (EGL, Mesa llvmpipe without a GPU); call ``close`` before the scene goes away.
"""

from __future__ import annotations

from pathlib import Path

import slicer
import vtk

from Testing.support import slicer_headless  # sets VTK_DEFAULT_OPENGL_WINDOW (EGL, offscreen)

SLICE_DISPLAYABLE_MANAGERS = (
    "vtkMRMLVolumeGlyphSliceDisplayableManager",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLCrosshairDisplayableManager",
    "vtkMRMLOrientationMarkerDisplayableManager",
    "vtkMRMLRulerDisplayableManager",
    "vtkMRMLScalarBarDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLColorLegendDisplayableManager",
)


def register_displayable_managers() -> None:
    """Register the slice views' displayable managers with Slicer's factory (once per process)."""
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    for name in SLICE_DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)


class SliceViewRenderer:
    """One slice view of the current scene (``slicer_headless.new_scene``), rendered offscreen."""

    def __init__(self, view: str = "Red", size: tuple[int, int] = (600, 600)):
        register_displayable_managers()
        self.view = view
        self.size = size
        self.logic = slicer_headless.slice_logic(view)
        self.slice_node = self.logic.GetSliceNode()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.ShowWindowOff()
        self.window.SetSize(*size)
        self.window.SetNumberOfLayers(2)
        self.window.SetAlphaBitPlanes(1)
        self.renderer = vtk.vtkRenderer()
        self.overlay = vtk.vtkRenderer()  # text annotations, above everything else
        self.overlay.SetLayer(1)
        for renderer in (self.renderer, self.overlay):
            renderer.GetActiveCamera().ParallelProjectionOn()
            self.window.AddRenderer(renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # some displayable managers expect one
        self.interactor.SetRenderWindow(self.window)
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        self.group.Initialize(slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(), self.renderer)
        self.group.SetMRMLDisplayableNode(self.slice_node)
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        image_actor = vtk.vtkActor2D()
        image_actor.SetMapper(self.mapper)
        image_actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(image_actor)
        self.logic.ResizeSliceNode(*size)

    def fit(self) -> None:
        """Fit the view to its background volume (Slicer's "reset field of view")."""
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()

    def set_field_of_view(self, width_mm: float) -> None:
        """Zoom: ``width_mm`` across the view, keeping the pixels square and the view's centre."""
        fov = self.slice_node.GetFieldOfView()
        self.slice_node.SetFieldOfView(width_mm, width_mm * self.size[1] / self.size[0], fov[2])

    def add_text(self, text: str, corner: int = 2, font_size: int = 16, color=(1.0, 1.0, 1.0)):
        """Text in a corner of the view (vtkCornerAnnotation: 0 lower left ... 2 upper left, 3 upper right)."""
        annotation = vtk.vtkCornerAnnotation()
        annotation.SetText(corner, text)
        annotation.SetMaximumFontSize(font_size)
        annotation.SetLinearFontScaleFactor(2)
        annotation.SetNonlinearFontScaleFactor(1)
        prop = annotation.GetTextProperty()
        prop.SetColor(*color)
        prop.SetFontFamilyToArial()
        prop.SetBackgroundColor(0.0, 0.0, 0.0)
        prop.SetBackgroundOpacity(0.6)
        self.overlay.AddViewProp(annotation)
        return annotation

    def render(self) -> vtk.vtkImageData:
        """Render and return the view as an RGB image (a copy)."""
        # The slice logic rebuilds its blending pipeline when layers change: connect at each render.
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.window.Render()
        self.window.Render()  # displayable managers update some props on the first render
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.SetInputBufferTypeToRGB()
        grab.Update()
        image = vtk.vtkImageData()
        image.DeepCopy(grab.GetOutput())
        return image

    def close(self) -> None:
        """Detach the displayable managers from the scene (before the scene is destroyed)."""
        self.group.SetMRMLDisplayableNode(None)
        self.window.Finalize()


def write_png(images, path: str | Path, gap: int = 4) -> Path:
    """Write one image, or several side by side (``gap`` black pixels between), as a PNG file."""
    images = list(images) if isinstance(images, list | tuple) else [images]
    append = vtk.vtkImageAppend()
    append.SetAppendAxis(0)
    for n, image in enumerate(images):
        if n and gap:
            spacer = vtk.vtkImageData()
            spacer.SetDimensions(gap, image.GetDimensions()[1], 1)
            spacer.AllocateScalars(image.GetScalarType(), image.GetNumberOfScalarComponents())
            spacer.GetPointData().GetScalars().Fill(0)
            append.AddInputData(spacer)
        append.AddInputData(image)
    append.Update()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(append.GetOutput())
    writer.Write()
    return path
