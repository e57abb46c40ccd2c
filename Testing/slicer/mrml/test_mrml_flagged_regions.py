"""Referral (the live "Flagged for review" segment, its statistics and curve) and regions (connected flagged
regions, their review order, centring the views, navigation) on small synthetic maps with known values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import slicer
from SegUncertaintyMRML import flagged_voxels, regions, segments

SHAPE = (20, 24, 28)  # (k, j, i)
SPACING = (0.9, 1.2, 2.5)


def oblique_matrix(spacing=SPACING, origin=(-11.0, 23.5, 4.25), degrees=20.0) -> np.ndarray:
    """IJK-to-RAS: a rotation about the S axis then about R, with anisotropic spacing."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    matrix = np.eye(4)
    matrix[:3, :3] = rx @ rz @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def structure_mask(shape=SHAPE) -> np.ndarray:
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return ((k - 10) / 7.0) ** 2 + ((j - 11) / 9.0) ** 2 + ((i - 13) / 10.0) ** 2 < 1


@pytest.fixture
def setup(mrml_scene):
    """An input volume, a segmentation with a 'brain' segment and a map of distinct random values in [0, 1)."""
    matrix = oblique_matrix()
    volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.float32), matrix, "input")
    values = np.random.default_rng(7).permutation(np.prod(SHAPE)).reshape(SHAPE).astype(np.float32)
    values /= values.max() + 1  # distinct values in [0, 1)
    map_node = slicer.util.addVolumeFromArray(values, matrix, "entropy")
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    brain_id = seg.GetSegmentation().AddEmptySegment("brain", "brain")
    structure = structure_mask()
    segments.set_segment_mask(seg, brain_id, structure, volume)
    return volume, map_node, seg, brain_id, values, structure


def test_set_threshold_flags_exactly_the_voxels_above(setup):
    """The flagged segment is values > t; the statistics equal direct counts; the structure is unchanged."""
    volume, map_node, seg, brain_id, values, structure = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    voxel_ml = np.prod(SPACING) / 1000.0
    for t in (0.9, 0.25, 0.6):  # down then up: the segment is replaced, not accumulated
        stats = flagging.set_threshold(t)
        expected = values > np.float32(t)
        flagged = segments.segment_mask(flagging.flagged_node, flagging.flagged_segment_id, volume)
        assert np.array_equal(flagged, expected)
        assert np.array_equal(flagging.mask, expected)
        count = int(expected.sum())
        assert stats.voxels == count and stats.threshold == t and flagging.threshold == t
        assert stats.volume_ml == pytest.approx(count * voxel_ml, rel=1e-9)
        assert stats.percent_of_segmentation == pytest.approx(100.0 * count / structure.sum(), rel=1e-9)
        assert stats.inside_segmentation == int((expected & structure).sum())
        assert stats == flagging.stats(t)
        assert np.array_equal(segments.segment_mask(seg, brain_id, volume), structure)
    flagged_segment = flagging.flagged_node.GetSegmentation().GetSegment(flagging.flagged_segment_id)
    assert flagged_segment.GetName() == flagged_voxels.FLAGGED_SEGMENT
    assert seg.GetSegmentation().GetNumberOfSegments() == 1, "the flagged segment is in its own node"


def test_threshold_at_or_above_the_maximum_flags_nothing(setup):
    """Flagging is strict (>): at the maximum and above, no voxel is flagged; below the minimum, all are."""
    volume, map_node, seg, brain_id, values, structure = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    assert flagging.maximum == pytest.approx(float(values.max()))
    for t in (float(values.max()), float(values.max()) + 1.0):
        stats = flagging.set_threshold(t)
        assert stats.voxels == 0 and stats.inside_segmentation == 0 and stats.volume_ml == 0.0
        assert not segments.segment_mask(flagging.flagged_node, flagging.flagged_segment_id, volume).any()
    stats = flagging.set_threshold(-1.0)
    assert stats.voxels == values.size and stats.inside_segmentation == int(structure.sum())
    assert segments.segment_mask(flagging.flagged_node, flagging.flagged_segment_id, volume).all()


def test_curve_is_monotone_and_equals_direct_counts(setup):
    """curve(): thresholds 0..max; % of all voxels flagged, non-increasing, equal to counting values > t."""
    volume, map_node, seg, brain_id, values, _ = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    thresholds, percents = flagging.curve(n_points=41)
    assert len(thresholds) == len(percents) == 41
    assert thresholds[0] == 0.0 and thresholds[-1] == pytest.approx(values.max())
    assert np.all(np.diff(percents) <= 0)
    direct = np.array([100.0 * (values > t).sum() / values.size for t in thresholds])
    np.testing.assert_allclose(percents, direct, rtol=0, atol=1e-12)
    assert percents[-1] == 0.0


@pytest.mark.parametrize("percent", [0.5, 1.0, 2.0, 3.3, 5.0, 7.5, 10.0, 12.4, 25.0, 50.0])
def test_threshold_for_percent_flags_about_that_percentage(setup, percent):
    """threshold_for_percent(p) then set_threshold flags p % of the segmented voxel count, within 1 voxel
    (all map values are distinct, so an exact count is reachable)."""
    volume, map_node, seg, brain_id, _, structure = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    wanted = structure.sum() * percent / 100.0
    stats = flagging.set_threshold(flagging.threshold_for_percent(percent))
    assert abs(stats.voxels - wanted) <= 1.0, (stats.voxels, wanted)
    assert stats.percent_of_segmentation == pytest.approx(percent, abs=100.0 / structure.sum())


def test_threshold_for_the_smallest_percentage_flags_one_voxel(setup):
    """A percentage worth one segmented voxel flags that one voxel (the most uncertain), not none."""
    volume, map_node, seg, brain_id, values, structure = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    stats = flagging.set_threshold(flagging.threshold_for_percent(100.0 / structure.sum()))
    assert stats.voxels == 1
    assert flagging.mask[np.unravel_index(np.argmax(values), values.shape)]


def test_threshold_for_zero_percent_flags_nothing(setup):
    """0 % gives the maximum as threshold: nothing flagged."""
    volume, map_node, seg, brain_id, _, _ = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    assert flagging.set_threshold(flagging.threshold_for_percent(0.0)).voxels == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_map_raises(setup, bad):
    """A map with NaN or infinity raises ValueError (counts by sorting would be meaningless)."""
    volume, _, seg, brain_id, values, _ = setup
    broken = values.copy()
    broken[3, 4, 5] = bad
    map_node = slicer.util.addVolumeFromArray(broken, oblique_matrix(), "broken")
    with pytest.raises(ValueError, match="NaN or infinite"):
        flagged_voxels.Referral(seg, brain_id, map_node, volume)


def test_map_on_another_grid_raises(setup):
    """A map not on the reference grid raises ValueError."""
    volume, _, seg, brain_id, values, _ = setup
    shifted = oblique_matrix(origin=(-11.0, 23.5, 5.25))
    with pytest.raises(ValueError, match="not on the grid"):
        flagged_voxels.Referral(seg, brain_id, slicer.util.addVolumeFromArray(values, shifted, "shifted"), volume)


def test_second_referral_reuses_the_flagged_segment(setup):
    """A new Referral on the same segmentation (another map) reuses "Flagged for review" and replaces its voxels."""
    volume, map_node, seg, brain_id, values, _ = setup
    first = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    first.set_threshold(0.5)
    other_values = (1.0 - values).astype(np.float32)
    second = flagged_voxels.Referral(seg, brain_id,
                                     slicer.util.addVolumeFromArray(other_values, oblique_matrix(), "mi"), volume)
    assert second.flagged_segment_id == first.flagged_segment_id
    second.set_threshold(0.9)
    assert second.flagged_node is first.flagged_node
    assert second.flagged_node.GetSegmentation().GetNumberOfSegments() == 1
    assert segments.segment_id_by_name(seg, flagged_voxels.FLAGGED_SEGMENT) is None, "never in the edited segmentation"
    flagged = segments.segment_mask(second.flagged_node, second.flagged_segment_id, volume)
    assert np.array_equal(flagged, other_values > 0.9)


def table_column(table_node, name: str) -> np.ndarray:
    table = table_node.GetTable()
    column = table.GetColumnByName(name)
    return np.array([column.GetValue(r) for r in range(table.GetNumberOfRows())], float)


def test_curve_plot_and_marker(setup, mrml_scene):
    """add_curve_plot: a chart with two series; the curve series' table holds curve(); the marker is a
    vertical line that update_curve_marker moves to the threshold."""
    volume, map_node, seg, brain_id, _, _ = setup
    flagging = flagged_voxels.Referral(seg, brain_id, map_node, volume)
    chart = flagged_voxels.add_curve_plot(mrml_scene, flagging, "curve")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    assert all(s.GetXColumnName() == "threshold" and s.GetYColumnName() == "percent flagged" for s in series)
    thresholds, percents = flagging.curve()
    curve_table = series[0].GetTableNode()
    np.testing.assert_allclose(table_column(curve_table, "threshold"), thresholds, rtol=1e-6)
    np.testing.assert_allclose(table_column(curve_table, "percent flagged"), percents, rtol=1e-6)
    marker_table = series[1].GetTableNode()
    assert marker_table.GetID() == chart.GetAttribute("SegUncertainty.MarkerTable")
    np.testing.assert_allclose(table_column(marker_table, "threshold"), [0.0, 0.0])
    for t in (0.37, 0.81):
        flagged_voxels.update_curve_marker(chart, t)
        np.testing.assert_allclose(table_column(marker_table, "threshold"), [t, t])
        y = table_column(marker_table, "percent flagged")
        assert y[0] == 0.0 and y[1] == pytest.approx(percents.max())  # spans the whole curve
    np.testing.assert_allclose(table_column(curve_table, "threshold"), thresholds, rtol=1e-6)  # curve untouched


# --- regions -------------------------------------------------------------------------------------------------


def assert_same_partition(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Same background and a bijection between the two labellings' component labels."""
    assert np.array_equal(ours > 0, theirs > 0)
    inside = ours > 0
    pairs = set(zip(ours[inside].tolist(), theirs[inside].tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize("density", [0.15, 0.3, 0.45])
def test_label_components_matches_scipy_face_connectivity(density):
    """label_components gives scipy.ndimage.label's face-connected (6-neighbour) partition, as Slicer's
    Islands effect, with labels ranked by size."""
    mask = np.random.default_rng(int(density * 100)).random(SHAPE) < density
    ours, n = regions.label_components(mask)
    theirs, n_scipy = scipy.ndimage.label(mask, structure=scipy.ndimage.generate_binary_structure(3, 1))
    assert n == n_scipy > 1
    assert ours.shape == SHAPE and ours.dtype == np.int32 and ours.max() == n
    assert_same_partition(ours, theirs)
    sizes = np.bincount(ours.reshape(-1))[1:]
    assert np.all(np.diff(sizes) <= 0)  # label 1 is the largest


def test_label_components_corner_contact_and_empty():
    """Voxels touching only at a corner or an edge are separate regions, a shared face joins them; an
    empty mask has none."""
    mask = np.zeros((4, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner
    mask[3, 3, 3] = mask[3, 2, 3] = True  # face
    mask[0, 3, 3] = mask[1, 2, 3] = True  # edge
    labels, n = regions.label_components(mask)
    assert n == 5 and labels[3, 3, 3] == labels[3, 2, 3] and labels[0, 0, 0] != labels[1, 1, 1]
    assert labels[0, 3, 3] != labels[1, 2, 3]
    labels, n = regions.label_components(np.zeros((4, 4, 4), bool))
    assert n == 0 and not labels.any()


def three_blobs():
    """A 27-voxel cube, an 8-voxel cube and a single voxel; maxima 0.5, 0.7 and 0.9 (smallest most uncertain)."""
    mask = np.zeros(SHAPE, bool)
    values = np.full(SHAPE, 0.05, np.float32)
    blobs = {"big": (slice(2, 5), slice(3, 6), slice(4, 7)), "mid": (slice(10, 12), slice(15, 17), slice(20, 22)),
             "one": (slice(17, 18), slice(2, 3), slice(25, 26))}
    for where, top in zip(blobs.values(), (0.5, 0.7, 0.9), strict=True):
        mask[where] = True
        values[where] = np.linspace(top, 0.1, mask[where].size, dtype=np.float32).reshape(mask[where].shape)
    return mask, values, blobs


def test_find_regions_order_sizes_and_statistics():
    """Largest first, or most uncertain first; voxels, volume, max and mean equal numpy's on each blob."""
    mask, values, blobs = three_blobs()
    matrix = oblique_matrix()
    voxel_ml = np.prod(SPACING) / 1000.0
    labels, by_size = regions.find_regions(mask, values, matrix, voxel_ml, order="largest")
    assert [r.voxels for r in by_size] == [27, 8, 1]
    _, by_max = regions.find_regions(mask, values, matrix, voxel_ml, order="most_uncertain")
    assert [r.voxels for r in by_max] == [1, 8, 27]
    assert [r.max_uncertainty for r in by_max] == pytest.approx([0.9, 0.7, 0.5])
    for region, where in zip(by_size, blobs.values(), strict=True):
        region_mask = labels == region.label
        expected = np.zeros(SHAPE, bool)
        expected[where] = True
        assert np.array_equal(region_mask, expected)
        assert region.volume_ml == pytest.approx(region.voxels * voxel_ml)
        assert region.max_uncertainty == pytest.approx(float(values[where].max()))
        assert region.mean_uncertainty == pytest.approx(float(values[where].astype(np.float64).mean()))
    with pytest.raises(ValueError, match="order"):
        regions.find_regions(mask, values, matrix, voxel_ml, order="random")
    assert regions.find_regions(np.zeros(SHAPE, bool), values, matrix, voxel_ml)[1] == []


def test_find_regions_ties_in_size_go_to_the_more_uncertain():
    """Two regions of equal size: 'largest' puts the one with the higher maximum first."""
    mask = np.zeros(SHAPE, bool)
    values = np.zeros(SHAPE, np.float32)
    mask[2:4, 2:4, 2:4] = True
    values[2:4, 2:4, 2:4] = 0.3
    mask[12:14, 12:14, 12:14] = True
    values[12:14, 12:14, 12:14] = 0.8
    _, found = regions.find_regions(mask, values, np.eye(4), 0.001, order="largest")
    assert [r.max_uncertainty for r in found] == pytest.approx([0.8, 0.3])


def to_ras(matrix: np.ndarray, kji) -> np.ndarray:
    k, j, i = kji
    return (matrix @ np.array([i, j, k, 1.0]))[:3]


def test_region_centre_and_focus_in_ras():
    """centre_ras is the voxel centroid mapped by the IJK-to-RAS matrix; focus_ras is the region's voxel
    nearest it (for an L-shaped region whose centroid is outside it, too)."""
    matrix = oblique_matrix()
    mask = np.zeros(SHAPE, bool)
    mask[4:9, 5, 6] = True  # an L: a bar along k ...
    mask[4, 5, 6:14] = True  # ... and one along i
    mask[15:18, 18:21, 20:23] = True  # a cube: centroid is its middle voxel
    values = np.ones(SHAPE, np.float32)
    labels, found = regions.find_regions(mask, values, matrix, 0.001)
    for region in found:
        kji = np.argwhere(labels == region.label)
        voxel_ras = np.array([to_ras(matrix, v) for v in kji])
        centroid = voxel_ras.mean(axis=0)
        np.testing.assert_allclose(region.centre_ras, centroid, atol=1e-9)
        nearest = np.min(np.linalg.norm(voxel_ras - centroid, axis=1))
        assert any(np.allclose(region.focus_ras, v, atol=1e-9) for v in voxel_ras)  # a voxel of the region
        assert np.linalg.norm(np.array(region.focus_ras) - centroid) == pytest.approx(nearest, abs=1e-9)
    cube = next(r for r in found if r.voxels == 27)
    np.testing.assert_allclose(cube.focus_ras, to_ras(matrix, (16, 19, 21)), atol=1e-9)
    np.testing.assert_allclose(cube.centre_ras, cube.focus_ras, atol=1e-9)
    ell = next(r for r in found if r.voxels == 12)
    centroid_ijk = np.argwhere(labels == ell.label).mean(axis=0)
    assert not mask[tuple(np.round(centroid_ijk).astype(int))]  # the L's centroid lies outside it


@pytest.mark.parametrize(("min_voxels", "kept"), [(1, [27, 8, 1]), (2, [27, 8]), (8, [27, 8]), (9, [27]),
                                                  (28, [])])
def test_min_voxels_drops_small_regions(min_voxels, kept):
    """Regions under min_voxels are dropped; the others keep their labels and statistics."""
    mask, values, _ = three_blobs()
    labels, all_regions = regions.find_regions(mask, values, np.eye(4), 0.001)
    _, found = regions.find_regions(mask, values, np.eye(4), 0.001, min_voxels=min_voxels)
    assert [r.voxels for r in found] == kept
    assert found == [r for r in all_regions if r.voxels >= min_voxels]


def slice_to_ras(node) -> np.ndarray:
    m = node.GetSliceToRAS()
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_centre_views_on_moves_every_slice_view(mrml_scene):
    """Each slice view passes through the point and has it at its centre, keeping its orientation."""
    views = {n.GetID(): n for n in slicer.util.getNodesByClass("vtkMRMLSliceNode", mrml_scene)}
    assert {"vtkMRMLSliceNodeRed", "vtkMRMLSliceNodeYellow", "vtkMRMLSliceNodeGreen"} <= set(views)
    before = {key: slice_to_ras(n) for key, n in views.items()}
    point = np.array([12.5, -7.25, 30.0])
    regions.centre_views_on(mrml_scene, tuple(point))
    for key, node in views.items():
        matrix = slice_to_ras(node)
        np.testing.assert_allclose(matrix[:3, 3], point, atol=1e-9)
        np.testing.assert_allclose(matrix[:3, :3], before[key][:3, :3], atol=1e-12)
        assert np.dot(point - matrix[:3, 3], matrix[:3, 2]) == pytest.approx(0.0, abs=1e-9)  # on the plane
        xy_to_ras = node.GetXYToRAS()
        width, height, _ = node.GetDimensions()
        centre = [sum(xy_to_ras.GetElement(r, c) * x for c, x in enumerate((width / 2, height / 2, 0, 1)))
                  for r in range(3)]
        np.testing.assert_allclose(centre, point, atol=1e-6)  # the view's middle pixel


def test_region_navigator_wraps_and_counts_reviewed():
    """next/previous wrap around; mark_reviewed marks the current (or a given) region; remaining counts."""
    mask, values, _ = three_blobs()
    _, found = regions.find_regions(mask, values, np.eye(4), 0.001)
    navigator = regions.RegionNavigator(found)
    assert navigator.current is None and navigator.remaining == 3
    assert [navigator.step().voxels for _ in range(4)] == [27, 8, 1, 27]
    assert navigator.step(-1).voxels == 1 and navigator.step(-1).voxels == 8
    navigator.mark_reviewed()
    assert navigator.reviewed == {found[1].label} and navigator.remaining == 2
    navigator.mark_reviewed()  # twice is once
    assert navigator.remaining == 2
    navigator.mark_reviewed(found[2])
    assert navigator.remaining == 1 and navigator.current is found[1]
    backwards = regions.RegionNavigator(found, reviewed={found[0].label})
    assert backwards.step(-1) is found[2] and backwards.remaining == 2
    empty = regions.RegionNavigator([])
    assert empty.step() is None and empty.step(-1) is None and empty.remaining == 0
    empty.mark_reviewed()
    assert empty.reviewed == set()
