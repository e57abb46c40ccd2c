"""The cohort worklist in a real MRML scene (SegUncertaintyMRML.cohort_scene): real ``segment`` run folders of a
small cohort (cohort_cases), stepped through in rank order, each case loaded only when stepped to, marks
written to worklist.csv, failed cases, edited cases kept, and refusals that leave the scene as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from SegUncertaintyMRML import flagged_voxels, segments, volumes
from SegUncertaintyMRML.cohort_scene import CASE_ATTRIBUTE, CohortError, CohortWorklist

from SegUncertaintyLib.cohort.worklist import read_worklist, write_csv_atomic
from Testing.support.cohort_cases import CASES, RANK_ORDER
from Testing.support.dicom_series import write_series
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

pytestmark = pytest.mark.slow


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def cases_in_scene(scene) -> set[str]:
    return {n.GetAttribute(CASE_ATTRIBUTE) for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)
            if n.GetAttribute(CASE_ATTRIBUTE)}


def data_nodes(scene) -> int:
    return sum(len(slicer.util.getNodesByClass(c, scene))
               for c in ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode"))


def segmented_voxels(run_folder: Path) -> int:
    return int((sitk.GetArrayFromImage(sitk.ReadImage(str(run_folder / "segmentation.nrrd"))) > 0).sum())


def structure_voxels(nodes) -> int:
    """Voxels of the structure segment, read in place (slicer.util.arrayFromSegmentBinaryLabelmap would leave
    its temporary labelmap's display node in the scene)."""
    seg = nodes.run.segmentation
    segment_id = seg.GetSegmentation().GetNthSegmentID(0)
    value = seg.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return int((slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, segment_id) == value).sum())


def hierarchy_items(scene) -> list[str]:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), children, True)
    return [hierarchy.GetItemName(children.GetId(i)) for i in range(children.GetNumberOfIds())]


def test_stepping_follows_rank_order_and_loads_each_case_only_when_stepped_to(mrml_scene, cohort):
    before, items = node_ids(mrml_scene), hierarchy_items(mrml_scene)
    worklist = CohortWorklist(cohort.parent)  # the folder names its worklist.csv
    assert node_ids(mrml_scene) == before  # opening reads the file only
    assert [row["case"] for row in worklist.rows] == RANK_ORDER
    visited, sizes = [], []
    while True:
        row = worklist.current
        nodes = worklist.load_case(mrml_scene)
        visited.append(row["case"])
        if row["status"] == "failed":
            assert nodes is None and cases_in_scene(mrml_scene) == set()  # nothing loaded, the last case gone
            assert f"Failed: {row['error']}" in worklist.describe()
        else:
            assert cases_in_scene(mrml_scene) == {row["case"]}  # this case only, the one before removed
            assert hierarchy_items(mrml_scene)[:3] == [f"Cohort case {row['rank']}: {row['case']}", row["case"],
                                                       f"SegUncertainty: {row['case']} mc_dropout"]
            assert structure_voxels(nodes) == segmented_voxels(cohort.parent / row["case"])  # its own results
            assert nodes.run.maps and nodes.volume.GetName() == row["case"]
            assert f"(rank {row['rank']}): {row['case']}, done" in worklist.describe()
            sizes.append(data_nodes(mrml_scene))
        if not worklist.step(+1):
            break
    assert visited == RANK_ORDER and worklist.index == len(RANK_ORDER) - 1
    assert len(set(sizes)) == 1  # the scene does not grow from case to case
    assert [CASES[c][0] for c in visited] == [1, 2, 3, 4]
    assert worklist.step(-1) and worklist.current["case"] == "broken"
    assert worklist.unload_all(mrml_scene) == []
    assert node_ids(mrml_scene) == before and hierarchy_items(mrml_scene) == items  # every case node removed


def test_marks_are_written_to_the_file_and_shown_by_the_next_open(mrml_scene, cohort):
    worklist = CohortWorklist(cohort)
    worklist.load_case(mrml_scene)
    row = worklist.mark_reviewed(note="liver edge checked")
    assert row["case"] == "large" and row["reviewed"] == "yes"
    on_disk = {r["case"]: r for r in read_worklist(cohort)}
    assert on_disk["large"]["reviewed"] == "yes" and on_disk["large"]["reviewer_note"] == "liver edge checked"
    assert on_disk["small"]["reviewed"] == ""
    again = CohortWorklist(cohort)
    assert again.current["reviewed"] == "yes" and "liver edge checked" in again.describe()
    assert again.progress() == "1 of 4 cases reviewed; 1 failed"
    # skipping passes over reviewed and failed cases, both ways
    again.index = 0
    assert again.step(+1, skip=True) and again.current["case"] == "small"
    assert again.step(+1, skip=True) and again.current["case"] == "medium"
    assert not again.step(+1, skip=True) and again.current["case"] == "medium"
    assert again.step(-1, skip=True) and again.current["case"] == "small"
    assert not again.step(-1, skip=True) and again.current["case"] == "small"
    worklist.unload_all(mrml_scene)


def test_marks_by_another_writer_show_after_reload(mrml_scene, cohort):
    from SegUncertaintyLib.cohort import review

    worklist = CohortWorklist(cohort)
    worklist.step(+1)
    review.mark_reviewed(cohort, "medium", note="from another Slicer")
    worklist.mark_reviewed()  # marks "small", re-reads the file
    assert {r["case"]: r["reviewed"] for r in worklist.rows} == {"large": "", "small": "yes", "broken": "",
                                                                "medium": "yes"}
    assert worklist.current["case"] == "small"


def test_an_edited_case_stays_in_the_scene_with_its_edits(mrml_scene, cohort):
    worklist = CohortWorklist(cohort)
    large = worklist.load_case(mrml_scene)
    seg = large.run.segmentation
    segment_id = seg.GetSegmentation().GetNthSegmentID(0)
    mask = segments.segment_mask(seg, segment_id, large.volume)
    mask[: mask.shape[0] // 2] = False  # the reviewer erases half of the structure
    segments.set_segment_mask(seg, segment_id, mask, large.volume)
    edited_voxels = int(mask.sum())

    worklist.step(+1)
    small = worklist.load_case(mrml_scene)
    assert worklist.kept == ["large"] and cases_in_scene(mrml_scene) == {"large", "small"}
    worklist.step(+1)
    assert worklist.load_case(mrml_scene) is None  # the failed case: "small" (not edited) goes, "large" stays
    assert worklist.kept == ["large"] and cases_in_scene(mrml_scene) == {"large"}
    assert small.volume.GetScene() is None and small.run.segmentation.GetScene() is None
    worklist.index = 0
    again = worklist.load_case(mrml_scene)
    assert again is large and structure_voxels(again) == edited_voxels  # the same nodes, the edit intact
    assert worklist.unload_all(mrml_scene) == ["large"]


def test_a_case_whose_nodes_were_deleted_is_loaded_again_without_leftovers(mrml_scene, cohort):
    worklist = CohortWorklist(cohort)
    first = worklist.load_case(mrml_scene)
    count = data_nodes(mrml_scene)
    volumes.remove_node(mrml_scene, first.run.segmentation)  # the reviewer deletes the segmentation
    again = worklist.load_case(mrml_scene)
    assert again is not first and again.run.segmentation.GetScene() is mrml_scene
    assert cases_in_scene(mrml_scene) == {"large"} and first.volume.GetScene() is None
    assert data_nodes(mrml_scene) == count
    worklist.unload_all(mrml_scene)


def test_region_review_marks_count_as_an_edit(mrml_scene, cohort):
    from SegUncertaintyMRML import corrections

    worklist = CohortWorklist(cohort)
    large = worklist.load_case(mrml_scene)
    assert not worklist.edited(large)
    corrections.save_review_state(large.run.segmentation, "map:entropy", 0.3, "largest", {1})
    assert worklist.edited(large)
    worklist.unload_all(mrml_scene)


def test_another_segmentation_on_the_case_input_keeps_the_case(mrml_scene, cohort):
    """E.g. the reviewer ran Segment again on the case's volume: that run's segmentation refers to the volume,
    so the volume is not removed from under it."""
    worklist = CohortWorklist(cohort)
    large = worklist.load_case(mrml_scene)
    flagged_voxels.flagged_node(large.run.segmentation, large.volume)  # the run's own: not the reviewer's
    assert not worklist.edited(large)
    mine = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "by hand")
    mine.SetReferenceImageGeometryParameterFromVolumeNode(large.volume)
    assert worklist.edited(large)
    worklist.step(+1)
    worklist.load_case(mrml_scene)
    assert worklist.kept == ["large"] and large.volume.GetScene() is mrml_scene


def rewrite(worklist_path: Path, case: str, **values) -> None:
    rows = read_worklist(worklist_path)
    with worklist_path.open(newline="") as f:
        columns = next(csv.reader(f))
    for row in rows:
        if row["case"] == case:
            row.update(values)
    write_csv_atomic(worklist_path, rows, columns)


@pytest.mark.parametrize("output", ["../outside", "/tmp", "large/../../outside", "link"])
def test_a_worklist_pointing_outside_its_folder_is_refused(mrml_scene, cohort, output):
    (cohort.parent.parent / "outside").mkdir()
    shutil.copytree(cohort.parent / "large", cohort.parent.parent / "outside", dirs_exist_ok=True)
    (cohort.parent / "link").symlink_to(cohort.parent.parent / "outside")
    rewrite(cohort, "large", output=output)
    before = node_ids(mrml_scene)
    with pytest.raises(CohortError, match="not a folder inside the worklist's folder"):
        CohortWorklist(cohort)
    assert node_ids(mrml_scene) == before


def manifest_input(cohort: Path, case: str, new_input: str, sha256: str | None = None) -> None:
    """Point a case's manifest at another input (and record its sha256, as a cohort run does)."""
    path = cohort.parent / case / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["input"] = new_input
    if sha256:
        manifest["settings"]["input_sha256"] = sha256
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("problem", ["missing input", "no series", "other grid", "no manifest", "changed input"])
def test_a_case_that_cannot_load_leaves_the_scene_as_it_was(mrml_scene, cohort, tmp_path, problem):
    worklist = CohortWorklist(cohort)
    worklist.load_case(mrml_scene)
    before, items = node_ids(mrml_scene), hierarchy_items(mrml_scene)
    if problem == "missing input":
        manifest_input(cohort, "small", str(tmp_path / "gone.nrrd"))
        expected = "is not there"
    elif problem == "no series":  # a folder where the manifest of an image file's case names no series
        (tmp_path / "series").mkdir()
        manifest_input(cohort, "small", str(tmp_path / "series"))
        expected = "names no DICOM series"
    elif problem == "other grid":  # an input read fine, then the results do not fit it: the volume is removed
        sitk.WriteImage(sphere_phantom(size=(20, 20, 20)), str(tmp_path / "other.nrrd"))
        manifest_input(cohort, "small", str(tmp_path / "other.nrrd"))
        expected = "is not on the grid of"
    elif problem == "no manifest":
        (cohort.parent / "small" / "manifest.json").unlink()
        expected = "No manifest.json"
    else:  # same grid, other voxels: only the recorded sha256 tells
        image = Path(read_worklist(cohort)[0]["input"]).parent / "small.nrrd"
        manifest_input(cohort, "small", str(image), sha256=hashlib.sha256(b"the image segmented").hexdigest())
        expected = "sha256 differs"
    worklist.step(+1)
    with pytest.raises(CohortError, match=expected) as error:
        worklist.load_case(mrml_scene)
    assert str(error.value).startswith("Case 'small': ") and "\n" not in str(error.value)
    assert node_ids(mrml_scene) == before and hierarchy_items(mrml_scene) == items
    worklist.unload_all(mrml_scene)


def test_relative_inputs_are_found_beside_the_worklist(mrml_scene, cohort):
    """The copy's manifests name the template's inputs by absolute path; a relative one is found beside the
    copy's worklist (a different image on the same grid there proves which file was read)."""
    manifest_input(cohort, "large", "inputs/large.nrrd")
    image = sitk.ReadImage(str(cohort.parent / "inputs" / "large.nrrd")) * 2.0
    sitk.WriteImage(image, str(cohort.parent / "inputs" / "large.nrrd"))
    worklist = CohortWorklist(cohort)
    nodes = worklist.load_case(mrml_scene)
    assert np.array_equal(slicer.util.arrayFromVolume(nodes.volume),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(cohort.parent / "inputs" / "large.nrrd"))))
    assert volumes.same_grid(nodes.volume, nodes.run.maps["entropy"])
    worklist.unload_all(mrml_scene)


def test_a_relative_input_is_found_where_the_cohort_ran_and_checked_by_its_sha256(mrml_scene, cohort):
    """`seguncertainty cohort scans/ --out cohort/` records scans/large.nrrd: found beside the cohort folder,
    and taken only with the sha256 the manifest records (a same-named file with other bytes in the cohort
    folder itself is passed over)."""
    scans = cohort.parent.parent / "scans"
    scans.mkdir()
    shutil.copy(cohort.parent / "inputs" / "large.nrrd", scans / "large.nrrd")
    (cohort.parent / "scans").mkdir()
    sitk.WriteImage(sitk.ReadImage(str(scans / "large.nrrd")) * 3.0, str(cohort.parent / "scans" / "large.nrrd"))
    digest = hashlib.sha256((scans / "large.nrrd").read_bytes()).hexdigest()
    manifest_input(cohort, "large", "scans/large.nrrd", sha256=digest)
    nodes = CohortWorklist(cohort).load_case(mrml_scene)
    assert np.array_equal(slicer.util.arrayFromVolume(nodes.volume),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(scans / "large.nrrd"))))


def test_a_worklist_written_by_the_real_cohort_command(mrml_scene, tmp_path, monkeypatch):
    """`seguncertainty cohort scans --out review` run from tmp_path (relative inputs, as a user types them) on
    three spheres and a corrupt file, reviewed from another current folder: rank order, the failed case, each
    case's input found (by the sha256 the run recorded) and its results loaded, the mark written to the CSV
    and the HTML, and kept when the command runs again (resume)."""
    from SegUncertaintyLib import cli
    from SegUncertaintyLib.core.errors import COHORT_CASES_FAILED

    model = write_threshold_model(tmp_path / "model")
    (tmp_path / "scans").mkdir()
    for name, radius in (("a", 12.0), ("b", 22.0), ("c", 17.0)):
        sitk.WriteImage(sphere_phantom(radius_mm=radius), str(tmp_path / "scans" / f"{name}.nrrd"))
    (tmp_path / "scans" / "broken.nrrd").write_bytes(b"not an image")
    argv = ["cohort", "scans", "--out", "review", "--model", str(model), "--samples", "4", "--progress", "none",
            "--no-overview"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == COHORT_CASES_FAILED
    monkeypatch.chdir(tmp_path / "model")  # Slicer's current folder is not where the cohort ran

    worklist = CohortWorklist(tmp_path / "review")
    assert [int(row["rank"]) for row in worklist.rows] == list(range(1, 5))
    assert worklist.rows[-1]["status"] == "failed" and worklist.rows[-1]["input"] == "scans/broken.nrrd"
    for row in worklist.rows[:3]:
        nodes = worklist.load_case(mrml_scene)
        assert nodes.volume.GetName() == row["case"] and cases_in_scene(mrml_scene) == {row["case"]}
        assert structure_voxels(nodes) == segmented_voxels(tmp_path / "review" / row["output"])
        worklist.step(+1)
    assert worklist.load_case(mrml_scene) is None and "Failed: " in worklist.describe()
    worklist.index = 0
    first = worklist.current["case"]
    worklist.mark_reviewed(note="checked in Slicer")
    assert {r["case"]: r["reviewed"] for r in read_worklist(tmp_path / "review")}[first] == "yes"
    assert "checked in Slicer" in (tmp_path / "review" / "worklist.html").read_text()

    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == COHORT_CASES_FAILED  # resumed: every case skipped, the mark kept
    again = CohortWorklist(tmp_path / "review")
    row = next(r for r in again.rows if r["case"] == first)
    assert (row["status"], row["reviewed"], row["reviewer_note"]) == ("skipped", "yes", "checked in Slicer")
    worklist.unload_all(mrml_scene)


def test_a_relative_input_far_from_the_worklist_is_found_where_the_cohort_read_it(mrml_scene, tmp_path,
                                                                                   monkeypatch):
    """`cohort in/a.nrrd --out <elsewhere>/x/y/review` run from data/deep and opened from tmp_path: the
    relative input is under none of the folders searched, so only the path the cohort recorded
    (``input_resolved``, checked by its sha256) finds it."""
    from SegUncertaintyLib import cli

    model = write_threshold_model(tmp_path / "model")
    deep = tmp_path / "data" / "deep"
    (deep / "in").mkdir(parents=True)
    sitk.WriteImage(sphere_phantom(radius_mm=15.0), str(deep / "in" / "a.nrrd"))
    review = tmp_path / "reviews" / "x" / "y" / "review"
    monkeypatch.chdir(deep)
    assert cli.main(["cohort", "in/a.nrrd", "--out", str(review), "--model", str(model), "--samples", "3",
                     "--progress", "none", "--no-overview"]) == 0
    monkeypatch.chdir(tmp_path)
    worklist = CohortWorklist(review)
    assert worklist.rows[0]["input"] == "in/a.nrrd"
    nodes = worklist.load_case(mrml_scene)
    assert np.array_equal(slicer.util.arrayFromVolume(nodes.volume),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(deep / "in" / "a.nrrd"))))
    worklist.unload_all(mrml_scene)


# -- DICOM series cases ----------------------------------------------------------------------------------------
# Two series in one folder (scans/dicom), different voxels and geometry: series 2 is turned 90 degrees about
# the slice normal and shifted, so loading the wrong series, or the right one with the wrong geometry, shows.
DICOM_SERIES = {"1.2.3.1": {"threshold": 0.5, "direction": None, "origin": (-10.0, -20.0, 30.0)},
                "1.2.3.2": {"threshold": 0.3, "direction": [0, -1, 0, 1, 0, 0, 0, 0, 1], "origin": (5.0, -8.0, 12.0)}}


@pytest.fixture
def dicom_cohort(tmp_path, monkeypatch):
    """`seguncertainty cohort scans --out review` run (from tmp_path, as a user types it) on a folder of two
    DICOM series, then the current folder changed; returns tmp_path. Run for each test (a few seconds): the
    manifests record where the series were read, so a test that changes a slice needs its own run."""
    from SegUncertaintyLib import cli

    sphere = sitk.GetArrayFromImage(sphere_phantom(size=(16, 16, 12), spacing=(3.0, 3.0, 3.0), radius_mm=12.0))
    for uid, series in DICOM_SERIES.items():
        write_series(tmp_path / "scans" / "dicom", (sphere > series["threshold"]).astype(np.int16) * 100, uid,
                     spacing=(3.0, 3.0, 3.0), origin=series["origin"], direction=series["direction"],
                     prefix=f"S{uid[-1]}_")
    model = write_threshold_model(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["cohort", "scans", "--out", "review", "--model", str(model), "--samples", "3",
                     "--progress", "none", "--no-overview"]) == 0
    monkeypatch.chdir(model)  # Slicer's current folder is not where the cohort ran
    return tmp_path


def series_image(folder: Path, uid: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def ijk_to_ras_of(image: sitk.Image) -> np.ndarray:
    """An ITK image's voxel-to-RAS matrix (ITK's geometry is LPS)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix


def case_series(review: Path, row: dict) -> str:
    return json.loads((review / row["output"] / "manifest.json").read_text())["settings"]["dicom_series"]


@pytest.mark.dicom
def test_stepping_loads_each_dicom_series_of_a_folder_on_its_results_grid(mrml_scene, dicom_cohort):
    """Each case of a folder holding two series loads its own series (its voxels, as SimpleITK reads that
    series) with the geometry of the case's segmentation file, and its results on that grid; opened from
    another current folder, the manifest's input_resolved and the series' digest find it."""
    review = dicom_cohort / "review"
    worklist = CohortWorklist(review)
    assert len(worklist.rows) == 2
    seen = set()
    for _ in worklist.rows:
        row = worklist.current
        uid = case_series(review, row)
        nodes = worklist.load_case(mrml_scene)
        expected = series_image(dicom_cohort / "scans" / "dicom", uid)
        assert np.array_equal(slicer.util.arrayFromVolume(nodes.volume), sitk.GetArrayFromImage(expected))
        assert np.allclose(volumes.ijk_to_ras(nodes.volume), ijk_to_ras_of(expected), atol=1e-4)
        segmentation = volumes.read_volume(mrml_scene, review / row["output"] / "segmentation.nrrd", "on disk",
                                           "vtkMRMLLabelMapVolumeNode")
        assert volumes.same_grid(nodes.volume, segmentation, tol_mm=1e-4)
        volumes.remove_node(mrml_scene, segmentation)
        assert structure_voxels(nodes) == segmented_voxels(review / row["output"]) > 0
        assert nodes.volume.GetAttribute(CASE_ATTRIBUTE) == row["case"] and cases_in_scene(mrml_scene) == {row["case"]}
        seen.add(uid)
        worklist.step(+1)
    assert seen == set(DICOM_SERIES)
    worklist.unload_all(mrml_scene)
    assert data_nodes(mrml_scene) == 0


@pytest.mark.parametrize("problem", ["changed slice", "missing slice", "added slice", "series gone", "truncated file"])
def test_a_dicom_case_whose_series_changed_since_the_run_is_refused(mrml_scene, dicom_cohort, problem):
    """A slice of the case's series changed (one pixel), removed or added after the run: the series' digest
    differs from the one the run recorded and the case is refused with one line, the scene as it was (likewise
    the series gone, or an unreadable DICOM file put in its folder); the other series of the folder still
    loads, except beside the unreadable file."""
    review = dicom_cohort / "review"
    worklist = CohortWorklist(review)
    uid = case_series(review, worklist.current)
    folder = dicom_cohort / "scans" / "dicom"
    files = sorted(folder.glob(f"S{uid[-1]}_*.dcm"))
    before, items = node_ids(mrml_scene), hierarchy_items(mrml_scene)
    expected = "its sha256 differs: a slice changed, added or removed since the run"
    if problem == "changed slice":
        data = bytearray(files[2].read_bytes())
        data[-1] ^= 1  # the last pixel's low byte
        files[2].write_bytes(bytes(data))
    elif problem == "missing slice":
        files[0].unlink()  # an end slice: what is left is still a regular series
    elif problem == "added slice":
        (folder / "sub").mkdir()  # a sub-folder is part of the series' folder
        shutil.copy(files[-1], folder / "sub" / "copy.dcm")
    elif problem == "series gone":
        for file in files:
            file.unlink()
        expected = f"holds no DICOM series {uid}"
    else:  # a truncated DICOM file put in the folder: named (the reader would fail on the whole folder)
        (folder / "broken.dcm").write_bytes(files[0].read_bytes()[:400])
        expected = "Cannot read DICOM file .*broken.dcm in .*: truncated or corrupt"
    with pytest.raises(CohortError, match=expected) as error:
        worklist.load_case(mrml_scene)
    assert str(error.value).startswith(f"Case '{worklist.current['case']}': ") and "\n" not in str(error.value)
    assert node_ids(mrml_scene) == before and hierarchy_items(mrml_scene) == items
    worklist.step(+1)
    if problem != "truncated file":
        assert worklist.load_case(mrml_scene) is not None
    worklist.unload_all(mrml_scene)


def test_a_moved_dicom_cohort_finds_its_series_beside_the_worklist(mrml_scene, dicom_cohort):
    """The scans and the review folder moved together: the folder the run read is gone, the relative input
    (scans/dicom) is found beside the moved worklist and its series' digest (paths relative to the folder)
    still matches."""
    moved = dicom_cohort / "moved"
    moved.mkdir()
    for name in ("scans", "review"):
        shutil.move(dicom_cohort / name, moved / name)
    worklist = CohortWorklist(moved / "review")
    row = worklist.current
    nodes = worklist.load_case(mrml_scene)
    expected = series_image(moved / "scans" / "dicom", case_series(moved / "review", row))
    assert np.array_equal(slicer.util.arrayFromVolume(nodes.volume), sitk.GetArrayFromImage(expected))
    worklist.unload_all(mrml_scene)
