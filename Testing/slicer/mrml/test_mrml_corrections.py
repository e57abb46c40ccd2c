"""Corrections (add / remove a flagged region through Slicer's segment editor logic, undo, redo), the review
state, and persistence: a saved scene reloaded into a new scene, and a run exported to files."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from SegUncertaintyMRML import corrections, flagged_voxels, persistence, results, scores_table, segments, volumes

from Testing.support import slicer_headless

SHAPE = (20, 24, 28)  # (k, j, i)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SCORES = {
    "classes": {"brain": {"cv": 0.0123456, "dpw": 0.98765, "volume_ml": 1500.25,
                          "volume_ml_interval95": [1490.0, 1512.5]},
                "lesion": {"cv": None}},
    "definitions": {"cv": {"definition": "Coefficient of variation", "direction": "higher = more uncertain"},
                    "dpw": {"definition": "Mean pairwise Dice", "direction": "lower = more uncertain"},
                    "volume_ml": {"definition": "Volume", "direction": "information"},
                    "volume_ml_interval95": {"definition": "95 % interval", "direction": "information"}},
    "readings": {"brain": {"cv": {"reading": "within the model's usual range"},
                           "dpw": {"reading": "outside the model's usual range"}}},
}


def oblique_matrix() -> np.ndarray:
    a = np.radians(25.0)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ np.diag(
        [1.1, 0.9, 2.2])
    matrix[:3, 3] = (-15.0, 20.5, -3.75)
    return matrix


def ellipsoid(centre, radii, shape=SHAPE) -> np.ndarray:
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return sum(((c - m) / r) ** 2 for c, m, r in zip((k, j, i), centre, radii, strict=True)) < 1


@pytest.fixture
def setup(mrml_scene):
    """Input volume, a segmentation ('brain' label 1, 'lesion' label 2), an entropy map, and a Corrections."""
    matrix = oblique_matrix()
    rng = np.random.default_rng(3)
    volume = slicer.util.addVolumeFromArray(rng.normal(100, 10, SHAPE).astype(np.float32), matrix, "input")
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "run segmentation")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    brain = ellipsoid((10, 12, 14), (7, 9, 10))
    lesion = ellipsoid((4, 5, 5), (2, 2, 3)) & ~brain
    ids = {}
    for name, mask, value in (("brain", brain, 1), ("lesion", lesion, 2)):
        ids[name] = seg.GetSegmentation().AddEmptySegment(name, name)
        seg.GetSegmentation().GetSegment(ids[name]).SetLabelValue(value)
        segments.set_segment_mask(seg, ids[name], mask, volume)
    entropy = rng.random(SHAPE).astype(np.float32)
    map_node = slicer.util.addVolumeFromArray(entropy, matrix, "run entropy")
    editing = corrections.Corrections(corrections.editor_logic(mrml_scene, seg, volume), seg, volume)
    return volume, seg, ids, brain, lesion, map_node, editing


def box(k, j, i) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = True
    return mask


def test_remove_clears_exactly_the_region(setup):
    """'remove' clears exactly region & segment, returns how many voxels were inside, leaves other segments."""
    volume, seg, ids, brain, lesion, _, editing = setup
    region = box((2, 9), (5, 15), (8, 20))  # partly inside, partly outside the brain
    inside = int((region & brain).sum())
    assert 0 < inside < region.sum()
    assert editing.apply(ids["brain"], region, "remove") == inside
    assert np.array_equal(segments.segment_mask(seg, ids["brain"], volume), brain & ~region)
    assert np.array_equal(segments.segment_mask(seg, ids["lesion"], volume), lesion)


def test_add_sets_exactly_the_region(setup):
    """'add' sets exactly the region's voxels, returns how many were outside the segment before."""
    volume, seg, ids, brain, lesion, _, editing = setup
    region = box((12, 19), (15, 23), (18, 27))
    outside = int((region & ~brain).sum())
    assert 0 < outside < region.sum()
    assert editing.apply(ids["brain"], region, "add") == outside
    assert np.array_equal(segments.segment_mask(seg, ids["brain"], volume), brain | region)
    assert np.array_equal(segments.segment_mask(seg, ids["lesion"], volume), lesion)


def test_no_change_returns_zero_and_edits_nothing(setup):
    """Removing voxels that are not in the segment, or adding ones already in it, returns 0 and changes nothing
    (no undo step either: undo then goes back past nothing)."""
    volume, seg, ids, brain, _, _, editing = setup
    outside = box((0, 2), (0, 2), (0, 2)) & ~brain
    inside = box((9, 11), (11, 13), (13, 15)) & brain
    assert outside.any() and inside.any()
    assert editing.apply(ids["brain"], outside, "remove") == 0
    assert editing.apply(ids["brain"], inside, "add") == 0
    assert editing.apply(ids["brain"], np.zeros(SHAPE, bool), "remove") == 0
    assert np.array_equal(segments.segment_mask(seg, ids["brain"], volume), brain)
    assert editing.logic.GetSegmentEditorNode() is not None


def test_undo_and_redo_restore_exact_masks(setup):
    """Two edits, then undo twice returns to the exact masks step by step; redo re-applies them in order."""
    volume, seg, ids, brain, _, _, editing = setup
    removed_region = box((5, 12), (8, 14), (10, 18))
    added_region = box((15, 20), (2, 8), (2, 9))
    editing.apply(ids["brain"], removed_region, "remove")
    after_remove = segments.segment_mask(seg, ids["brain"], volume)
    editing.apply(ids["brain"], added_region, "add")
    after_add = segments.segment_mask(seg, ids["brain"], volume)
    assert np.array_equal(after_add, (brain & ~removed_region) | added_region)

    def current():
        return segments.segment_mask(seg, ids["brain"], volume)

    editing.undo()
    assert np.array_equal(current(), after_remove)
    editing.undo()
    assert np.array_equal(current(), brain)
    editing.redo()
    assert np.array_equal(current(), after_remove)
    editing.redo()
    assert np.array_equal(current(), after_add)


def test_invalid_mode_raises_and_edits_nothing(setup):
    """A mode other than add / remove raises ValueError before touching the segment."""
    volume, seg, ids, brain, _, _, editing = setup
    with pytest.raises(ValueError, match="mode"):
        editing.apply(ids["brain"], box((0, 20), (0, 24), (0, 28)), "replace")
    assert np.array_equal(segments.segment_mask(seg, ids["brain"], volume), brain)


def test_review_state_round_trip(setup):
    """save_review_state then load_review_state gives the same map, threshold, order and sorted reviewed labels;
    a segmentation without (or with a garbled) state gives None."""
    _, seg, _, _, _, _, _ = setup
    assert corrections.load_review_state(seg) is None
    corrections.save_review_state(seg, "mutual_information", 0.4375, "most_uncertain", {7, 2, np.int64(5)})
    assert corrections.load_review_state(seg) == {"map": "mutual_information", "threshold": 0.4375,
                                                  "order": "most_uncertain", "reviewed": [2, 5, 7]}
    seg.SetAttribute(corrections.REVIEW_ATTRIBUTE, "{not json")
    assert corrections.load_review_state(seg) is None


def test_edits_and_review_state_survive_save_and_load_into_a_new_scene(setup, mrml_scene, tmp_path):
    """save_scene then load_scene into a new scene: the edited segments, the flagged segment, the map voxels,
    the review state and the run attributes come back."""
    volume, seg, ids, brain, lesion, map_node, editing = setup
    region = box((3, 10), (4, 12), (6, 16))
    editing.apply(ids["brain"], region, "remove")
    flagging = flagged_voxels.Referral(seg, ids["brain"], map_node, volume)
    flagging.set_threshold(0.8)
    flagged = flagging.mask.copy()
    corrections.save_review_state(seg, "entropy", 0.8, "largest", {1, 3})
    for node in (seg, map_node, flagging.flagged_node):  # results.import_results names the run before
        node.SetAttribute(results.RUN_ATTRIBUTE, "input ensemble")
    seg.SetAttribute(results.ROLE_ATTRIBUTE, "segmentation")
    map_node.SetAttribute(results.ROLE_ATTRIBUTE, "map:entropy")
    (tmp_path / "saved").mkdir()
    path = persistence.save_scene(mrml_scene, tmp_path / "saved" / "review.mrb")
    assert path.is_file() and sorted(os.listdir(tmp_path / "saved")) == ["review.mrb"]

    new = slicer_headless.new_scene(tmp_path / "home2")
    assert new is not mrml_scene
    persistence.load_scene(new, path, slicer.app_logic)
    roles = results.find_runs(new)["input ensemble"]
    loaded_seg, loaded_map = roles["segmentation"], roles["map:entropy"]
    assert loaded_seg.GetScene() is new
    loaded_volume = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", new)
                         if n.GetName() == "input")
    np.testing.assert_allclose(volumes.ijk_to_ras(loaded_volume), oblique_matrix(), atol=1e-6)

    def mask(name):
        return segments.segment_mask(loaded_seg, segments.segment_id_by_name(loaded_seg, name), loaded_volume)

    assert np.array_equal(mask("brain"), brain & ~region)
    assert np.array_equal(mask("lesion"), lesion)
    flagged_node = roles["flagged"]
    assert loaded_seg.GetNodeReference(flagged_voxels.FLAGGED_REFERENCE) is flagged_node
    flagged_id = segments.segment_id_by_name(flagged_node, flagged_voxels.FLAGGED_SEGMENT)
    assert np.array_equal(segments.segment_mask(flagged_node, flagged_id, loaded_volume), flagged)
    assert np.array_equal(slicer.util.arrayFromVolume(loaded_map), slicer.util.arrayFromVolume(map_node))
    assert corrections.load_review_state(loaded_seg) == {"map": "entropy", "threshold": 0.8, "order": "largest",
                                                         "reviewed": [1, 3]}


def test_load_scene_of_a_missing_bundle_raises(tmp_path):
    """load_scene of a file that is not there raises OSError."""
    new = slicer_headless.new_scene(tmp_path / "home")
    with pytest.raises(OSError, match="absent.mrb"):
        persistence.load_scene(new, tmp_path / "absent.mrb", slicer.app_logic)


def sitk_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def test_export_run_writes_the_corrected_run(setup, mrml_scene, tmp_path):
    """export_run: files on the input's geometry; the corrected labelmap has the edit, the run's label values
    and not the flagged voxels; the flagged mask, the map and the scores rows as they are in the scene;
    nothing else in the folder."""
    volume, seg, ids, brain, lesion, map_node, editing = setup
    region = box((8, 14), (6, 13), (4, 24))
    editing.apply(ids["brain"], region, "remove")
    flagging = flagged_voxels.Referral(seg, ids["brain"], map_node, volume)
    flagging.set_threshold(0.7)
    table = scores_table.add_scores_table(mrml_scene, SCORES, "run scores")
    run = {"segmentation": seg, "scores": table, "map:entropy": map_node}
    folder = tmp_path / "export"
    written = persistence.export_run(mrml_scene, run, volume, folder)
    names = ["segmentation_corrected.nrrd", "flagged_for_review.nrrd", "entropy.nrrd", "scores.tsv"]
    assert [p.name for p in written] == names and all(p.parent == folder for p in written)
    assert sorted(os.listdir(folder)) == sorted(names)

    expected_labels = np.zeros(SHAPE, np.uint8)
    expected_labels[brain & ~region] = 1
    expected_labels[lesion] = 2
    for name, expected in (("segmentation_corrected.nrrd", expected_labels),
                           ("flagged_for_review.nrrd", flagging.mask.astype(np.uint8)),
                           ("entropy.nrrd", slicer.util.arrayFromVolume(map_node))):
        image = sitk.ReadImage(str(folder / name))
        np.testing.assert_allclose(sitk_ijk_to_ras(image), volumes.ijk_to_ras(volume), atol=1e-9)
        assert np.array_equal(sitk.GetArrayFromImage(image), expected), name
    corrected = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentation_corrected.nrrd")))
    flagged_only = flagging.mask & ~brain & ~lesion
    assert flagged_only.any() and not corrected[flagged_only].any()  # the flagged segment is no structure

    with open(folder / "scores.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == list(scores_table.COLUMNS)
    assert [tuple(row) for row in rows[1:]] == scores_table.table_rows(table)
    assert rows[1][:4] == ["brain", "cv", "0.01235", "within the model's usual range"]
    assert [row[2] for row in rows[1:]] == ["0.01235", "0.9877", "1500", "1490 - 1512", "n/a"]


def test_export_run_from_run_nodes_with_label_values_of_the_run(setup, mrml_scene, tmp_path):
    """export_run also takes a results.RunNodes and writes NIfTI; without a flagged segment no flagged file is
    written; a segment's label value (4, not its position 3) is kept."""
    volume, seg, ids, brain, lesion, map_node, _ = setup
    vessel = box((15, 18), (18, 21), (1, 27)) & ~brain & ~lesion
    vessel_id = seg.GetSegmentation().AddEmptySegment("vessel", "vessel")
    seg.GetSegmentation().GetSegment(vessel_id).SetLabelValue(4)
    segments.set_segment_mask(seg, vessel_id, vessel, volume)
    table = scores_table.add_scores_table(mrml_scene, SCORES, "run scores")
    run = results.RunNodes("run", seg, maps={"entropy": map_node}, scores=table)
    written = persistence.export_run(mrml_scene, run, volume, tmp_path / "export", extension=".nii.gz")
    assert sorted(p.name for p in written) == ["entropy.nii.gz", "scores.tsv", "segmentation_corrected.nii.gz"]
    image = sitk.ReadImage(str(tmp_path / "export" / "segmentation_corrected.nii.gz"))
    expected = np.zeros(SHAPE, np.uint8)
    expected[brain] = 1
    expected[lesion] = 2
    expected[vessel] = 4
    assert np.array_equal(sitk.GetArrayFromImage(image), expected)
    np.testing.assert_allclose(sitk_ijk_to_ras(image), volumes.ijk_to_ras(volume), atol=1e-4)  # NIfTI: float32
    assert sorted(os.listdir(tmp_path / "export")) == sorted(p.name for p in written)


def test_an_external_undo_history_is_used_when_given(setup):
    """With save_state (the Segment Editor widget's saveStateForUndo in Slicer) the state is saved there,
    once per edit that changes something, and not in the logic's own history."""
    volume, seg, ids, brain, _, _, editing = setup
    calls = []
    region = box((12, 19), (15, 23), (18, 27))
    assert editing.apply(ids["brain"], region, "add", save_state=lambda: calls.append(1)) > 0
    assert calls == [1]
    assert editing.apply(ids["brain"], region, "add", save_state=lambda: calls.append(1)) == 0
    assert calls == [1], "no change: nothing saved"
    editing.undo()  # the logic's own history holds nothing: the edit stays
    assert np.array_equal(segments.segment_mask(seg, ids["brain"], volume), brain | region)
