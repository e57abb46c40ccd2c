"""Geometry of the MRML glue on a real scene: volume files keep the exact IJK-to-RAS matrix, failed reads and
writes leave neither nodes nor files behind, and segments land on the voxels they were given."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from SegUncertaintyMRML import segments, volumes
from vtk.util import numpy_support

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SHAPE = (20, 24, 28)  # (k, j, i)


def rotation(axis, degrees: float) -> np.ndarray:
    """A proper rotation about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross


def oblique_matrix(spacing=(0.7, 1.3, 2.9), origin=(12.5, -33.25, 7.125), axis=(1.0, 2.0, 3.0),
                   degrees=27.0) -> np.ndarray:
    """A 4x4 IJK-to-RAS matrix with an oblique direction and anisotropic spacing."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(axis, degrees) @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def sitk_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """IJK-to-RAS of an image as SimpleITK reads it (LPS physical space), converted to RAS."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def ras_of_index(matrix: np.ndarray, ijk) -> np.ndarray:
    return (matrix @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def sample_array(shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """An empty folder of its own (tmp_path also holds the scene's home folder)."""
    path = tmp_path / "files"
    path.mkdir()
    return path


def test_write_volume_keeps_oblique_geometry_and_voxels(mrml_scene, folder):
    """write_volume: SimpleITK reads back the node's exact IJK-to-RAS (LPS->RAS) and the same (k, j, i) voxels."""
    matrix = oblique_matrix()
    array = sample_array()
    node = slicer.util.addVolumeFromArray(array, matrix, "oblique")
    np.testing.assert_allclose(volumes.ijk_to_ras(node), matrix, atol=1e-12)
    path = folder / "oblique.nrrd"
    volumes.write_volume(node, path)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == SHAPE[::-1]
    np.testing.assert_allclose(sitk_ijk_to_ras(image), matrix, atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    # a voxel's physical position agrees point by point, not only as a matrix
    ijk = (5, 17, 11)
    lps = image.TransformIndexToPhysicalPoint(ijk)
    np.testing.assert_allclose(LPS_TO_RAS @ np.array(lps), ras_of_index(matrix, ijk), atol=1e-9)
    assert os.listdir(folder) == ["oblique.nrrd"]  # no temporary file left beside it


@pytest.mark.parametrize("file_name", ["sitk_written.nrrd", "sitk_written.nii.gz"])
def test_read_volume_matches_simpleitk_geometry(mrml_scene, folder, file_name):
    """read_volume of a file written by SimpleITK (oblique, anisotropic) gives SimpleITK's geometry in RAS."""
    spacing = (0.8, 1.1, 2.5)
    direction = rotation((2.0, -1.0, 0.5), 33.0)
    array = sample_array(seed=1)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 14.5, 3.25))
    image.SetDirection(tuple(direction.reshape(-1)))
    path = folder / file_name
    sitk.WriteImage(image, str(path))
    expected = sitk_ijk_to_ras(sitk.ReadImage(str(path)))  # what the file holds (NIfTI stores float32)
    node = volumes.read_volume(mrml_scene, path, "read back")
    assert node.GetScene() is mrml_scene and node.GetName() == "read back"
    np.testing.assert_allclose(volumes.ijk_to_ras(node), expected, atol=1e-5)
    np.testing.assert_allclose(node.GetSpacing(), spacing, atol=1e-5)
    assert np.array_equal(slicer.util.arrayFromVolume(node), array)
    assert node.GetDisplayNode() is not None


def test_write_then_read_round_trip_is_exact(mrml_scene, folder):
    """write_volume then read_volume returns the same matrix (to 1e-9 mm), voxels, and a grid same_grid accepts."""
    node = slicer.util.addVolumeFromArray(sample_array(seed=2), oblique_matrix(), "original")
    volumes.write_volume(node, folder / "round.nrrd")
    back = volumes.read_volume(mrml_scene, folder / "round.nrrd", "round")
    np.testing.assert_allclose(volumes.ijk_to_ras(back), volumes.ijk_to_ras(node), atol=1e-9)
    assert np.array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))
    assert volumes.same_grid(back, node)


def test_same_grid_true_and_false(mrml_scene):
    """same_grid: equal dims and matrix -> True; a shifted origin, other spacing, rotation or dims -> False."""
    base = oblique_matrix()
    a = slicer.util.addVolumeFromArray(sample_array(), base, "a")
    same = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.float32), base, "same dims and matrix")
    assert volumes.same_grid(a, same) and volumes.same_grid(same, a)
    shifted = base.copy()
    shifted[0, 3] += 0.01
    rescaled = oblique_matrix(spacing=(0.7, 1.3, 3.0))
    rotated = oblique_matrix(degrees=28.0)
    for matrix in (shifted, rescaled, rotated):
        other = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.float32), matrix, "other")
        assert not volumes.same_grid(a, other)
    other_dims = slicer.util.addVolumeFromArray(np.zeros((20, 24, 27), np.float32), base, "other dims")
    assert not volumes.same_grid(a, other_dims)
    tiny = base.copy()
    tiny[0, 3] += 1e-4  # under the default 1e-3 mm tolerance
    assert volumes.same_grid(a, slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.float32), tiny, "tiny"))


def test_voxel_volume_ml(mrml_scene):
    """voxel_volume_ml is the spacing product / 1000 (mm^3 -> mL), whatever the direction."""
    node = slicer.util.addVolumeFromArray(sample_array(), oblique_matrix(spacing=(0.7, 1.3, 2.9)), "v")
    assert volumes.voxel_volume_ml(node) == pytest.approx(0.7 * 1.3 * 2.9 / 1000.0, rel=1e-9)


def scene_node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_read_volume_missing_file_raises_and_adds_no_node(mrml_scene, folder):
    """A missing file: OSError naming it, and the scene keeps exactly the nodes it had."""
    before = scene_node_ids(mrml_scene)
    with pytest.raises(OSError, match="missing.nrrd"):
        volumes.read_volume(mrml_scene, folder / "missing.nrrd", "missing")
    assert scene_node_ids(mrml_scene) == before


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_read_volume_truncated_file_raises_and_adds_no_node(mrml_scene, folder, keep):
    """A truncated NRRD (header or data cut short): OSError, and no node is left in the scene."""
    node = slicer.util.addVolumeFromArray(sample_array(), oblique_matrix(), "full")
    volumes.write_volume(node, folder / "full.nrrd")
    data = (folder / "full.nrrd").read_bytes()
    (folder / "cut.nrrd").write_bytes(data[: int(len(data) * keep)])
    before = scene_node_ids(mrml_scene)
    with pytest.raises(OSError, match="cut.nrrd"):
        volumes.read_volume(mrml_scene, folder / "cut.nrrd", "cut")
    assert scene_node_ids(mrml_scene) == before
    assert not slicer.util.getNodes("cut*", useLists=True)


def test_write_volume_into_unwritable_folder_raises_and_leaves_nothing(mrml_scene, folder):
    """A target whose parent is a file: OSError naming the node, no partial file anywhere, the node untouched."""
    array = sample_array()
    node = slicer.util.addVolumeFromArray(array, oblique_matrix(), "to write")
    (folder / "a_file").write_text("not a folder")
    with pytest.raises(OSError, match="to write"):
        volumes.write_volume(node, folder / "a_file" / "out.nrrd")
    assert os.listdir(folder) == ["a_file"]
    assert (folder / "a_file").read_text() == "not a folder"
    assert node.GetStorageNode() is None  # the glue never attaches its writer to the node
    assert np.array_equal(slicer.util.arrayFromVolume(node), array)


def test_write_volume_failure_leaves_the_folder_as_it_was(mrml_scene, folder):
    """A writer failure in a writable folder (no writer for the extension): OSError, and the folder holds only
    what it held before (write_atomically promises that nothing is left behind on failure)."""
    node = slicer.util.addVolumeFromArray(sample_array(), oblique_matrix(), "no writer")
    (folder / "keep.txt").write_text("kept")
    with pytest.raises(OSError):
        volumes.write_volume(node, folder / "out.unknownformat")
    assert sorted(os.listdir(folder)) == ["keep.txt"]


def test_write_volume_replaces_an_existing_file_completely(mrml_scene, folder):
    """Overwriting a file gives the new content (atomic replace), with no temporary left beside it."""
    path = folder / "v.nrrd"
    volumes.write_volume(slicer.util.addVolumeFromArray(sample_array(seed=3), np.eye(4), "first"), path)
    second = sample_array(seed=4)
    volumes.write_volume(slicer.util.addVolumeFromArray(second, oblique_matrix(), "second"), path)
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), second)
    np.testing.assert_allclose(sitk_ijk_to_ras(image), oblique_matrix(), atol=1e-9)
    assert os.listdir(folder) == ["v.nrrd"]


def blob_mask(shape=SHAPE) -> np.ndarray:
    """An asymmetric mask (an off-centre ellipsoid plus a separate bar and a single voxel)."""
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = ((k - 8) / 5.0) ** 2 + ((j - 10) / 7.0) ** 2 + ((i - 15) / 4.0) ** 2 < 1
    mask[15:18, 2:4, 3:20] = True
    mask[1, 22, 26] = True
    return mask


def segmentation_on(volume, name="seg"):
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return seg


def test_segment_mask_round_trip_on_oblique_volume(mrml_scene):
    """set_segment_mask then segment_mask returns the same voxels on a rotated, anisotropic grid."""
    volume = slicer.util.addVolumeFromArray(sample_array(), oblique_matrix(), "oblique")
    seg = segmentation_on(volume)
    segment_id = seg.GetSegmentation().AddEmptySegment("s", "s")
    mask = blob_mask()
    segments.set_segment_mask(seg, segment_id, mask, volume)
    back = segments.segment_mask(seg, segment_id, volume)
    assert back.dtype == bool and back.shape == SHAPE
    assert np.array_equal(back, mask)
    # replacing (not adding): a second, disjoint mask leaves only itself
    second = np.zeros(SHAPE, bool)
    second[2:5, 3:6, 20:25] = True
    segments.set_segment_mask(seg, segment_id, second, volume)
    assert np.array_equal(segments.segment_mask(seg, segment_id, volume), second)
    segments.set_segment_mask(seg, segment_id, np.zeros(SHAPE, bool), volume)
    assert not segments.segment_mask(seg, segment_id, volume).any()


def test_segment_voxels_are_at_the_right_place_in_ras(mrml_scene):
    """The segment's stored labelmap puts each mask voxel at the volume's RAS position of that voxel
    (an independent check that a transposed or mirrored set/get pair would fail)."""
    matrix = oblique_matrix()
    volume = slicer.util.addVolumeFromArray(sample_array(), matrix, "oblique")
    seg = segmentation_on(volume)
    segment_id = seg.GetSegmentation().AddEmptySegment("s", "s")
    mask = np.zeros(SHAPE, bool)
    voxels_kji = [(3, 5, 7), (12, 20, 1), (19, 0, 27)]
    for kji in voxels_kji:
        mask[kji] = True
    segments.set_segment_mask(seg, segment_id, mask, volume)
    labelmap = seg.GetSegmentation().GetSegment(segment_id).GetRepresentation("Binary labelmap")
    world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(world)
    image_to_world = np.array([[world.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = labelmap.GetExtent()
    stored = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    stored = stored.reshape(dims[::-1])
    k, j, i = np.nonzero(stored)
    positions = {tuple(np.round(ras_of_index(image_to_world, (a + extent[0], b + extent[2], c + extent[4])), 6))
                 for a, b, c in zip(i, j, k, strict=True)}
    expected = {tuple(np.round(ras_of_index(matrix, kji[::-1]), 6)) for kji in voxels_kji}
    assert positions == expected


def test_segment_id_by_name(mrml_scene):
    """segment_id_by_name finds a segment by its name and gives None for an absent name."""
    volume = slicer.util.addVolumeFromArray(sample_array(), oblique_matrix(), "v")
    seg = segmentation_on(volume)
    first = seg.GetSegmentation().AddEmptySegment("id_one", "brain")
    seg.GetSegmentation().AddEmptySegment("id_two", "lesion")
    assert first == "id_one"
    assert segments.segment_id_by_name(seg, "brain") == "id_one"
    assert segments.segment_id_by_name(seg, "lesion") == "id_two"
    assert segments.segment_id_by_name(seg, "absent") is None
