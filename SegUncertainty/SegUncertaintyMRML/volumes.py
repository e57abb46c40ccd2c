"""Volume nodes from and to files, DICOM series and arrays, with their exact voxel-to-RAS geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from SegUncertaintyLib.core.files import has_dicom_preamble

from .files import write_atomically


def ijk_to_ras(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix (mm)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def same_grid(a, b, tol_mm: float = 1e-3) -> bool:
    """True when two volume nodes have the same dimensions and IJK-to-RAS matrix (within ``tol_mm``)."""
    dims_a = a.GetImageData().GetDimensions() if a.GetImageData() else None
    dims_b = b.GetImageData().GetDimensions() if b.GetImageData() else None
    return dims_a == dims_b and bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tol_mm))


def voxel_volume_ml(node) -> float:
    """Volume of one voxel in mL (spacing in mm)."""
    return float(np.prod(node.GetSpacing())) / 1000.0


def read_volume(scene, path: str | Path, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Read an image file into a new volume node of ``node_class``; raise OSError naming the file."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    node = scene.AddNewNodeByClass(node_class, name)
    if not storage.ReadData(node) or node.GetImageData() is None:
        remove_node(scene, node)
        raise OSError(f"Could not read image file {path}")
    node.CreateDefaultDisplayNodes()
    return node


def _series_reader(files: list[str], selected: int | None = None):
    """Slicer's archetype reader given ``files`` (their DICOM headers analysed, grouped by SeriesInstanceUID;
    ``selected``: keep the files of the series at that index), its information read; OSError if it fails."""
    try:  # Slicer: its own module (not in the slicer namespace); PyPI's slicer-core: flattened into slicer
        import vtkITK
    except ImportError:
        vtkITK = slicer
    reader = vtkITK.vtkITKArchetypeImageSeriesScalarReader()
    reader.SetArchetype(files[0])
    for name in files:
        reader.AddFileName(name)
    reader.SetSingleFile(0)
    if selected is not None:
        reader.SetSelectedUID(selected)
    reader.UpdateInformation()
    if reader.GetErrorCode() != vtk.vtkErrorCode.NoError:
        raise OSError(f"Could not read the DICOM headers of {len(files)} files from {files[0]} on")
    return reader


def _readable_header(path: str) -> bool:
    try:
        _series_reader([path])
    except OSError:
        return False
    return True


def dicom_series_files(folder: str | Path, uid: str) -> list[str]:
    """The files (absolute, sorted) of DICOM series ``uid`` under ``folder``, its sub-folders too (symbolic links
    to folders not followed), read as Slicer reads them: the files with the DICOM preamble, grouped by the
    SeriesInstanceUID in their headers (vtkITKArchetypeImageSeriesReader); [] when the series is not there.
    OSError naming a file whose header cannot be read."""
    candidates = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        candidates += [os.path.join(dirpath, f) for f in sorted(filenames) if f.upper() != "DICOMDIR"]
    candidates = [f for f in candidates if has_dicom_preamble(f)]
    if not candidates:
        return []
    try:
        reader = _series_reader(candidates)
    except OSError:  # name the file (the reader tells only that the headers of the set could not be read)
        bad = next((f for f in candidates if not _readable_header(f)), candidates[0])
        raise OSError(f"Cannot read DICOM file {bad} in {folder}: truncated or corrupt") from None
    uids = [reader.GetNthSeriesInstanceUID(i) for i in range(reader.GetNumberOfSeriesInstanceUIDs())]
    if uid not in uids:  # exact match (the reader's ExistSeriesInstanceUID matches substrings)
        return []
    reader = _series_reader(candidates, uids.index(uid))  # same files, same order: same series indices
    return sorted(reader.GetFileName(i) for i in range(reader.GetNumberOfFileNames()))


def read_dicom_series(scene, files: list[str], name: str):
    """Read one DICOM series (``files``: all its slices, any order) into a new scalar volume node, as Slicer's
    DICOM scalar volume plugin does (an archetype storage node given the file list: slices sorted along their
    normal, geometry from the headers); OSError unless each of several files became one slice."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(files[0])
    storage.ResetFileNameList()
    for file in files:
        storage.AddFileName(file)
    storage.SetSingleFile(0)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = node.GetImageData() if storage.ReadData(node) else None
    if image is None or (len(files) > 1 and image.GetDimensions()[2] != len(files)):
        slices = image.GetDimensions()[2] if image is not None else 0
        remove_node(scene, node)
        raise OSError(f"Could not read the DICOM series of {len(files)} files from {files[0]} on "
                      f"(Slicer's reader made {slices} slices of them)")
    node.CreateDefaultDisplayNodes()
    return node


def remove_node(scene, node) -> None:
    """Remove a node with its display and storage nodes (scene.RemoveNode leaves those behind)."""
    if node is None or node.GetScene() is None:
        return
    owned = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        owned += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetNumberOfStorageNodes"):
        owned += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for other in owned:
        if other is not None and other.GetScene() is not None:
            scene.RemoveNode(other)


def write_volume(node, path: str | Path) -> None:
    """Write a volume node to ``path`` (format from the extension) atomically, without touching the node."""
    def write(partial: str) -> bool:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(partial)
        storage.SetUseCompression(True)
        return bool(storage.WriteData(node))

    try:
        write_atomically(write, path)
    except OSError as exc:
        raise OSError(f"Could not write '{node.GetName()}' to {path}") from exc


def oriented_image(array: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """A vtkOrientedImageData that shares the memory of a C-contiguous (k, j, i) uint8 array."""
    if array.dtype != np.uint8 or not array.flags.c_contiguous:
        raise ValueError("oriented_image needs a C-contiguous uint8 array")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras_matrix, dtype=float)))
    scalars = numpy_support.numpy_to_vtk(array.reshape(-1), deep=0, array_type=vtk.VTK_UNSIGNED_CHAR)
    scalars._numpy_reference = array  # keep the buffer alive as long as VTK uses it
    image.GetPointData().SetScalars(scalars)
    return image
