"""The command line's real outputs through the MRML glue: results.import_results on the bundled sample, the
progress lines and errors of the background process (process.py), and the whole headless workflow
(scenario.run_scenario) with its saved scene reloaded into a new scene."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from SegUncertaintyModule import process, scenario
from SegUncertaintyMRML import persistence, results, scores_table, segments, volumes

from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.core.vocabulary import METHODS as LIBRARY_METHODS
from Testing.support import slicer_headless

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "SegUncertaintyLib" / "sample" / "colin27_t1_2mm.nii.gz"
MAPS = ("entropy", "mutual_information", "expected_entropy", "variance")


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The command line run once on the bundled sample (ensemble); returns (output folder, its output lines,
    stdout and stderr together as the module reads them)."""
    out = tmp_path_factory.mktemp("sample_run") / "out"
    args = process.segment_command(sys.executable, str(SAMPLE), str(out), method="ensemble")
    done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    return out, done.stdout.splitlines()


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def data_node_ids(scene) -> list[str]:
    """IDs of the volume, segmentation and table nodes (what a run's import creates as data)."""
    return sorted(n.GetID() for cls in ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode")
                  for n in slicer.util.getNodesByClass(cls, scene))


def hierarchy_items(scene) -> list[int]:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), children, True)
    return [children.GetId(i) for i in range(children.GetNumberOfIds())]


def read_input(scene):
    """The sample as the input volume, placed in a patient / study like a loaded DICOM series."""
    volume = volumes.read_volume(scene, SAMPLE, "colin")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    subject = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(subject, "study")
    hierarchy.CreateItem(study, volume)
    return volume, study


def sitk_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def copy_run(out: Path, folder: Path) -> Path:
    shutil.copytree(out, folder)
    return folder


# --- results.import_results on the real outputs ------------------------------------------------------------


def test_segmentation_equals_the_labelmap_file(mrml_scene, sample_run):
    """The brain segment is segmentation.nrrd == 1 voxel for voxel, on the input's grid, as its reference."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    run = results.import_results(mrml_scene, out, volume)
    expected = sitk_array(out / "segmentation.nrrd") == 1
    assert 0 < expected.sum() < expected.size
    brain_id = segments.segment_id_by_name(run.segmentation, "brain")
    assert brain_id is not None
    assert np.array_equal(segments.segment_mask(run.segmentation, brain_id, volume), expected)
    assert run.segmentation.GetSegmentation().GetNumberOfSegments() == 1  # background is no segment
    assert run.segmentation.GetSegmentation().GetSegment(brain_id).GetLabelValue() == 1
    role = run.segmentation.GetReferenceImageGeometryReferenceRole()
    assert run.segmentation.GetNodeReference(role) is volume


def test_maps_and_probability_equal_the_files(mrml_scene, sample_run):
    """Every uncertainty map and the probability equal their files, on the input's exact grid."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    run = results.import_results(mrml_scene, out, volume)
    assert set(run.maps) == set(MAPS) and list(run.maps) == list(results.MAP_ORDER)  # display order
    for name in MAPS:
        node = run.maps[name]
        assert np.array_equal(slicer.util.arrayFromVolume(node), sitk_array(out / f"{name}.nrrd")), name
        np.testing.assert_allclose(volumes.ijk_to_ras(node), volumes.ijk_to_ras(volume), atol=1e-4)
        assert node.GetAttribute(results.ROLE_ATTRIBUTE) == f"map:{name}"
    probability = run.probabilities["brain"]
    assert np.array_equal(slicer.util.arrayFromVolume(probability), sitk_array(out / "probability_brain.nrrd"))
    assert probability.GetAttribute(results.ROLE_ATTRIBUTE) == "probability:brain"


def test_run_nodes_share_one_folder_under_the_input_study(mrml_scene, sample_run):
    """All run nodes are children of one new folder, whose parent is the input volume's parent (its study)."""
    out, _ = sample_run
    volume, study = read_input(mrml_scene)
    run = results.import_results(mrml_scene, out, volume)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    assert run.folder_item and hierarchy.GetItemParent(run.folder_item) == study
    assert hierarchy.GetItemName(run.folder_item) == f"SegUncertainty: {run.name}"
    nodes = run.all_nodes()
    assert len(nodes) == 1 + len(MAPS) + 1 + 1 and len({n.GetID() for n in nodes}) == len(nodes)
    for node in nodes:
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == run.folder_item, node.GetName()
        assert node.GetAttribute(results.RUN_ATTRIBUTE) == run.name
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(run.folder_item, children)
    assert children.GetNumberOfIds() == len(nodes)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume)) == study  # the input stays put


def test_scores_table_rows_match_scores_json(mrml_scene, sample_run):
    """One table row per structure and score, with the formatted value and the reading from scores.json."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    run = results.import_results(mrml_scene, out, volume)
    scores = json.loads((out / "scores.json").read_text())
    table = run.scores.GetTable()
    assert [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())] == list(scores_table.COLUMNS)
    rows = scores_table.table_rows(run.scores)
    expected = [(s, score, scores_table.format_value(v)) for s, values in scores["classes"].items()
                for score, v in values.items()]
    assert [row[:3] for row in rows] == expected
    readings = scores["readings"]
    assert readings  # the sample's scores carry readings against the model card's ranges
    for structure, score, _, reading, definition in rows:
        info = scores["definitions"][score]
        assert definition == f"{info['definition']} ({info['direction']})"
        if score in readings.get(structure, {}):
            assert reading == readings[structure][score]["reading"]
        else:
            assert reading == ("" if info["direction"] == "information" else scores_table.NO_REFERENCE)
    by_score = {row[1]: row for row in rows}
    interval = scores["classes"]["brain"]["volume_ml_interval95"]
    assert by_score["volume_ml_interval95"][2] == f"{interval[0]:.4g} - {interval[1]:.4g}"
    assert float(by_score["volume_ml"][2]) == pytest.approx(scores["classes"]["brain"]["volume_ml"], rel=1e-3)
    assert run.scores.GetAttribute(results.ROLE_ATTRIBUTE) == "scores"


def test_second_import_makes_a_new_run_and_keeps_the_first_edited_one(mrml_scene, sample_run):
    """Importing twice gives distinct names ('... (2)') and new nodes; an edit to the first run survives."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    first = results.import_results(mrml_scene, out, volume)
    brain_id = segments.segment_id_by_name(first.segmentation, "brain")
    edited = segments.segment_mask(first.segmentation, brain_id, volume)
    edited[:, :, : edited.shape[2] // 2] = False  # the user removes the right half of the brain
    segments.set_segment_mask(first.segmentation, brain_id, edited, volume)
    first_entropy = slicer.util.arrayFromVolume(first.maps["entropy"]).copy()

    second = results.import_results(mrml_scene, out, volume)
    assert first.name == "colin ensemble" and second.name == "colin ensemble (2)"
    assert not {n.GetID() for n in first.all_nodes()} & {n.GetID() for n in second.all_nodes()}
    assert all(n.GetScene() is mrml_scene for n in first.all_nodes())
    assert np.array_equal(segments.segment_mask(first.segmentation, brain_id, volume), edited)
    second_id = segments.segment_id_by_name(second.segmentation, "brain")
    original = sitk_array(out / "segmentation.nrrd") == 1
    assert np.array_equal(segments.segment_mask(second.segmentation, second_id, volume), original)
    assert not np.array_equal(edited, original)
    assert np.array_equal(slicer.util.arrayFromVolume(first.maps["entropy"]), first_entropy)
    assert first.segmentation.GetName() != second.segmentation.GetName()
    assert results.import_results(mrml_scene, out, volume).name == "colin ensemble (3)"


def test_find_runs_finds_every_role(mrml_scene, sample_run):
    """find_runs returns each run by name with its nodes by role; run_from_roles rebuilds the RunNodes."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    run = results.import_results(mrml_scene, out, volume)
    found = results.find_runs(mrml_scene)
    assert list(found) == [run.name]
    roles = found[run.name]
    expected = {"segmentation": run.segmentation, "scores": run.scores, "probability:brain": run.probabilities["brain"]}
    expected.update({f"map:{name}": node for name, node in run.maps.items()})
    assert roles == expected
    rebuilt = results.run_from_roles(run.name, roles)
    assert rebuilt.segmentation is run.segmentation and rebuilt.scores is run.scores
    assert rebuilt.maps == run.maps and rebuilt.probabilities == run.probabilities


def test_import_leaves_no_orphan_nodes(mrml_scene, sample_run):
    """Every node a successful import adds belongs to the run: its data nodes or their display nodes (the
    temporary labelmap read for the segmentation is removed with its display node)."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    before = set(node_ids(mrml_scene))
    run = results.import_results(mrml_scene, out, volume)
    added = set(node_ids(mrml_scene)) - before
    owned = set()
    for node in run.all_nodes():
        owned.add(node.GetID())
        for i in range(node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0):
            owned.add(node.GetNthDisplayNodeID(i))
    assert added == owned, f"nodes no run node owns: {sorted(added - owned)}"


def test_folder_without_manifest_raises_and_adds_nothing(mrml_scene, sample_run, tmp_path):
    """No manifest.json (an unfinished run), or an unreadable one: ResultsError, and no node is added."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    folder = copy_run(out, tmp_path / "unfinished")
    (folder / "manifest.json").unlink()
    before, items = node_ids(mrml_scene), hierarchy_items(mrml_scene)
    with pytest.raises(results.ResultsError, match="manifest"):
        results.import_results(mrml_scene, folder, volume)
    (folder / "manifest.json").write_text('{"outputs": [')
    with pytest.raises(results.ResultsError, match="manifest"):
        results.import_results(mrml_scene, folder, volume)
    assert node_ids(mrml_scene) == before and hierarchy_items(mrml_scene) == items


def test_missing_map_file_raises_and_removes_everything_added(mrml_scene, sample_run, tmp_path):
    """A manifest naming a map file that is not there: ResultsError, and the scene is left exactly as it was
    (no segmentation, maps, tables, display nodes or legends from the failed import)."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    folder = copy_run(out, tmp_path / "missing_map")
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        if entry.get("map") == "variance":  # the last map read, after the segmentation and three maps
            entry["file"] = "absent.nrrd"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    before, data_before, items = node_ids(mrml_scene), data_node_ids(mrml_scene), hierarchy_items(mrml_scene)
    with pytest.raises(results.ResultsError, match="absent.nrrd"):
        results.import_results(mrml_scene, folder, volume)
    assert data_node_ids(mrml_scene) == data_before
    assert hierarchy_items(mrml_scene) == items
    assert node_ids(mrml_scene) == before, f"left behind: {sorted(set(node_ids(mrml_scene)) - set(before))}"


def test_map_on_another_grid_raises(mrml_scene, sample_run, tmp_path):
    """A map whose origin is 1 mm off the input's: ResultsError naming the file; no data node stays."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    folder = copy_run(out, tmp_path / "shifted_map")
    image = sitk.ReadImage(str(folder / "mutual_information.nrrd"))
    image.SetOrigin(tuple(np.array(image.GetOrigin()) + [1.0, 0.0, 0.0]))
    sitk.WriteImage(image, str(folder / "mutual_information.nrrd"))
    before = data_node_ids(mrml_scene)
    with pytest.raises(results.ResultsError, match="mutual_information.nrrd"):
        results.import_results(mrml_scene, folder, volume)
    assert data_node_ids(mrml_scene) == before
    assert results.find_runs(mrml_scene) == {}


def test_input_on_another_grid_raises(mrml_scene, sample_run):
    """Results imported against a volume on another grid (other spacing): ResultsError, no data node stays."""
    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    other = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(volume).copy(),
                                           volumes.ijk_to_ras(volume) @ np.diag([1.01, 1.0, 1.0, 1.0]), "other")
    before = data_node_ids(mrml_scene)
    with pytest.raises(results.ResultsError, match="segmentation.nrrd"):
        results.import_results(mrml_scene, out, other)
    assert data_node_ids(mrml_scene) == before


def synthetic_run(folder: Path, scene, labels: dict[int, str]):
    """A small output folder written by hand (labelmap with the given values, one map, scores, manifest) on the
    grid of a new oblique input volume; returns (input volume, labelmap array)."""
    folder.mkdir()
    shape = (6, 7, 8)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.5, 2.0, 2.5])
    matrix[:3, 3] = (4.0, -6.0, 10.0)
    volume = slicer.util.addVolumeFromArray(np.zeros(shape, np.float32), matrix, "small")
    volumes.write_volume(volume, folder / "input.nrrd")
    reference = sitk.ReadImage(str(folder / "input.nrrd"))
    labelmap = np.zeros(shape, np.uint8)
    corners = [(slice(0, 2), slice(0, 2), slice(0, 2)), (slice(3, 6), slice(4, 7), slice(5, 8)),
               (slice(0, 1), slice(5, 7), slice(0, 3)), (slice(4, 6), slice(0, 2), slice(6, 8))]
    for value, where in zip(labels, corners, strict=False):
        labelmap[where] = value
    entropy = np.random.default_rng(0).random(shape).astype(np.float32)
    for name, array in (("segmentation.nrrd", labelmap), ("entropy.nrrd", entropy)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(folder / name))
    (folder / "scores.json").write_text(json.dumps({"classes": {n: {"cv": 0.01} for n in labels.values()}}))
    names = {"0": "background", **{str(k): v for k, v in labels.items()}}
    manifest = {"method": "ensemble", "outputs": [
        {"file": "segmentation.nrrd", "kind": "labelmap", "labels": names},
        {"file": "entropy.nrrd", "kind": "uncertainty", "map": "entropy"},
        {"file": "scores.json", "kind": "scores"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return volume, labelmap


@pytest.mark.parametrize("labels", [{1: "grey", 2: "white"}, {2: "white", 5: "csf"}, {1: "grey", 2: "white", 5: "csf"},
                                    {3: "lesion"}])
def test_import_keeps_every_label_of_a_multi_label_segmentation(mrml_scene, tmp_path, labels):
    """Each label of the labelmap becomes a segment holding exactly its voxels, with the label's value, also
    when the label values are not 1, 2, 3... (a model whose labels skip values)."""
    volume, labelmap = synthetic_run(tmp_path / "out", mrml_scene, labels)
    run = results.import_results(mrml_scene, tmp_path / "out", volume)
    segmentation = run.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(labels)
    for value, name in labels.items():
        segment_id = segments.segment_id_by_name(run.segmentation, name)
        assert segment_id is not None
        mask = segments.segment_mask(run.segmentation, segment_id, volume)
        assert (labelmap == value).any()
        assert np.array_equal(mask, labelmap == value), f"{name} (label {value})"
        assert segmentation.GetSegment(segment_id).GetLabelValue() == value


def test_manifest_without_segmentation_or_scores_raises(mrml_scene, tmp_path):
    """A manifest listing no labelmap, or no scores, is no complete result: ResultsError, no data node stays."""
    volume, _ = synthetic_run(tmp_path / "out", mrml_scene, {1: "brain"})
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    before = data_node_ids(mrml_scene)
    for kind, message in (("labelmap", "no segmentation"), ("scores", "no scores")):
        edited = dict(manifest, outputs=[e for e in manifest["outputs"] if e["kind"] != kind])
        manifest_path.write_text(json.dumps(edited))
        with pytest.raises(results.ResultsError, match=message):
            results.import_results(mrml_scene, tmp_path / "out", volume)
        assert data_node_ids(mrml_scene) == before
    manifest_path.write_text(json.dumps(manifest))
    assert results.import_results(mrml_scene, tmp_path / "out", volume).name == "small ensemble"


# --- process: the background run's arguments and progress lines ---------------------------------------------


def test_progress_lines_of_a_real_run(sample_run):
    """The real run's JSON lines parse; stages come in order; overall progress never goes back and ends at 1."""
    _, lines = sample_run
    parsed = [process.parse_line(line) for line in lines]
    progress = [p for p in parsed if p is not None]
    json_lines = [line for line in lines if line.strip().startswith("{")]
    assert len(progress) == len(json_lines) >= 5
    order = list(process.STAGES)
    stage_index = [order.index(p.stage) for p in progress]
    assert stage_index == sorted(stage_index) and set(stage_index) == set(range(len(order)))
    overall = [p.overall for p in progress]
    assert all(b >= a - 1e-12 for a, b in zip(overall, overall[1:], strict=False))
    assert progress[-1].stage == "write" and progress[-1].fraction == 1.0
    assert progress[-1].overall == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= p.overall <= 1.0 and p.label == process.STAGES[p.stage][0] for p in progress)
    for line, p in zip(lines, parsed, strict=True):
        if p is not None:
            data = json.loads(line)
            assert (p.message, p.elapsed_s, p.fraction) == (data["message"], data["elapsed_s"], data["fraction"])
    log = [line for line, p in zip(lines, parsed, strict=True) if p is None]
    assert any(line.startswith("Wrote ") for line in log)  # the log text is not mistaken for progress


def test_parse_line_values_and_non_progress_lines():
    """overall = shares of the earlier stages + this stage's share x fraction; other lines give None."""
    p = process.parse_line('  {"stage": "inference", "fraction": 0.5, "message": "m", "elapsed_s": 2.5}\n')
    assert p.overall == pytest.approx(0.03 + 0.04 + 0.80 * 0.5) and p.label == "Sampling the model"
    assert p.message == "m" and p.elapsed_s == 2.5
    assert process.parse_line('{"stage": "load", "fraction": 0.0}').overall == 0.0
    assert process.parse_line('{"stage": "write", "fraction": 1.0}').overall == pytest.approx(1.0)
    for line in ("Wrote /tmp/out (ensemble, 3 samples, cpu)", "", "{not json", '{"stage": "load"}',
                 '{"fraction": 0.5}', '{"stage": "load", "fraction": "half"}', '{"stage": "load", "fraction": null}',
                 "[1, 2]", "  brain: volume 1747.5 mL", '{"stage": ["load"], "fraction": 0.5}',
                 '{"stage": "load", "fraction": 0.5, "elapsed_s": null}', '{"stage": {}, "fraction": 0.5}',
                 '{"stage": "load", "fraction": NaN}', '{"stage": "load", "fraction": 0.5, "elapsed_s": "x"}'):
        assert process.parse_line(line) is None, line  # never raises: a raising callback stops Slicer's poll


def test_error_message_of_a_real_failed_run(tmp_path):
    """A run on a missing file fails with a non-zero code; error_message gives the command line's reason."""
    args = process.segment_command(sys.executable, str(tmp_path / "absent.nii.gz"), str(tmp_path / "out"),
                                   method="ensemble")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode not in (0, process.EXIT_CANCELLED)
    log = [line for line in (done.stdout + done.stderr).splitlines() if process.parse_line(line) is None]
    message = process.error_message(log, done.returncode)
    assert "absent.nii.gz" in message and "error:" not in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_error_message_choices():
    """The last 'error:' line's text; 'Cancelled.' for exit code 130; else the exit code and the last line."""
    log = ["loading", "seguncertainty: error: first problem", "more", "seguncertainty: error: Input is 2D", ""]
    assert process.error_message(log, 2) == "Input is 2D"
    assert process.error_message(log, process.EXIT_CANCELLED) == "Cancelled."
    message = process.error_message(["starting", "Killed", "  "], 137)
    assert "137" in message and message.endswith("Killed")
    assert "exit code 1" in process.error_message([], 1)


def test_segment_command_arguments_and_rejections():
    """Valid choices give the command line's arguments; an unknown method or device raises ValueError."""
    args = process.segment_command("/py", "/in.nii.gz", "/out", model="m", method="mc_dropout", samples=7,
                                   device="cpu", seed=3)
    assert args[:5] == ["/py", "-m", "SegUncertaintyLib.cli", "segment", "/in.nii.gz"]
    expected = {"--out": "/out", "--model": "m", "--method": "mc_dropout", "--device": "cpu", "--seed": "3",
                "--progress": "json", "--samples": "7"}
    assert {option: args[args.index(option) + 1] for option in expected} == expected
    assert "--samples" not in process.segment_command("/py", "/in", "/out")
    with pytest.raises(ValueError, match="method"):
        process.segment_command("/py", "/in", "/out", method="bootstrap")
    with pytest.raises(ValueError, match="device"):
        process.segment_command("/py", "/in", "/out", device="tpu")
    assert set(process.METHOD_LABELS) == set(LIBRARY_METHODS)  # the panel offers exactly the library's methods


def test_segment_command_passes_the_backend_and_precision_the_library_parses():
    """The panel's backend and precision reach the command line as --backend / --precision, which the library's
    own parser reads back; the defaults are the library's; the panel offers exactly the library's choices."""
    from SegUncertaintyLib import cli
    from SegUncertaintyLib.core import options

    args = process.segment_command("/py", "/in.nrrd", "/out", backend="openvino", precision="bf16")
    parsed = cli.parser().parse_args(args[3:])  # after "/py -m SegUncertaintyLib.cli"
    assert (parsed.command, parsed.backend, parsed.precision) == ("segment", "openvino", "bf16")
    default = cli.parser().parse_args(process.segment_command("/py", "/in.nrrd", "/out")[3:])
    assert (default.backend, default.precision) == (options.DEFAULT_BACKEND, "auto") == (
        options.SegmentOptions().backend, options.SegmentOptions().precision)
    assert (process.BACKENDS, process.PRECISIONS) == (options.BACKENDS, options.PRECISIONS)
    with pytest.raises(ValueError, match="backend"):
        process.segment_command("/py", "/in", "/out", backend="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        process.segment_command("/py", "/in", "/out", precision="int8")


def test_backend_line_of_a_real_run_and_of_each_kind_of_inference_entry(sample_run):
    """The results line reads the manifest's "inference" entry: the default run is torch fp32, the reference;
    another backend shows its guard figure (2 significant digits) and how it was chosen; no entry (nnU-Net and
    MONAI bundle runs, older versions) gives no line."""
    out, _ = sample_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inference"]["backend"] == "torch" and manifest["inference"]["precision"] == "fp32"
    assert process.backend_line(manifest) == "Ran on torch fp32 (the reference)"
    entry = {"backend": "openvino", "precision": "fp32", "max_abs_dp": 2.2172927856445312e-05, "chosen_by": "probe"}
    assert process.backend_line({"inference": entry}) == \
        "Ran on openvino fp32 (max |Δp| 2.2e-05 against torch fp32; chosen by the probe)"
    requested = dict(entry, backend="onnxruntime", max_abs_dp=1.31e-06, chosen_by="requested")
    assert process.backend_line({"inference": requested}) == "Ran on onnxruntime fp32 (max |Δp| 1.3e-06 against " \
                                                            "torch fp32)"
    cuda = {"backend": "torch", "precision": "fp16", "max_abs_dp": None, "chosen_by": "cuda"}
    assert process.backend_line({"inference": cuda}) == "Ran on torch fp16 (not compared with torch fp32; on the GPU)"
    assert set(process.CHOSEN_BY) >= {"requested", "probe", "cached probe", "no other candidate", "cuda"}
    for no_entry in ({}, {"inference": None}, {"inference": {"backend": "torch"}}, {"inference": "torch"}):
        assert process.backend_line(no_entry) == ""


def test_backend_tooltip_states_the_libraries_guard():
    """The tooltip's accuracy guard is the one auto applies (inference/backends/choice.py)."""
    from SegUncertaintyLib.inference.backends import choice

    assert f"at most {choice.GUARD}" in process.BACKEND_TOOLTIP
    assert "once per machine and model" in process.BACKEND_TOOLTIP and "caches" in process.BACKEND_TOOLTIP
    assert "nnU-Net and MONAI bundle models always run on torch" in process.BACKEND_TOOLTIP


@pytest.mark.parametrize("method", LIBRARY_METHODS)
def test_count_passes_match_the_library_plan(method):
    """count_passes (torch-free) counts exactly the passes the library plans, for every method, ensemble
    size, sample count (None: the library's default) and declared flips; None exactly where it refuses."""
    from SegUncertaintyLib.core.errors import SegUncertaintyError

    for members in (1, 2, 3):
        for samples in (None, 1, 2, 4, 8, 10):
            for flip_axes in ((), (2,), (1, 2), (0, 1, 2)):
                try:
                    expected = len(plan_samples(method, members, samples, flip_axes))
                except SegUncertaintyError:
                    expected = None
                assert process.count_passes(method, samples, members, flip_axes) == expected, \
                    (method, members, samples, flip_axes)


def test_panel_estimate_uses_the_bundled_models_declared_flips():
    """The bundled brain model declares LR flips only: TTA is 2 passes per member (not 8), with --samples left
    to the library for TTA and passed for MC dropout."""
    from SegUncertaintyLib.models.card import load_card
    from SegUncertaintyLib.models.catalog import DEFAULT_MODEL, available_models

    card = load_card(available_models()[DEFAULT_MODEL])
    members = len(card.members)
    assert card.flip_axes == (2,)
    assert process.samples_option("ensemble+tta", 10) is None and process.samples_option("mc_dropout", 10) == 10
    for method in ("tta", "ensemble+tta"):
        passes = process.count_passes(method, process.samples_option(method, 10), members, card.flip_axes)
        assert passes == len(plan_samples(method, members, None, card.flip_axes)) == 2 * (members if "+" in method
                                                                                             else 1)


def test_count_passes_values():
    """Analytic pass counts: 1, T, M, T, M*T, M*T."""
    expected = {"softmax": 1, "mc_dropout": 6, "ensemble": 3, "tta": 6, "ensemble+mc_dropout": 18,
                "ensemble+tta": 18}
    assert {m: process.count_passes(m, 6, 3) for m in expected} == expected


# --- the whole workflow ------------------------------------------------------------------------------------


def test_run_scenario_and_reload_its_scene(mrml_scene, tmp_path):
    """run_scenario passes its own checks, exports the expected files, and its .mrb loads into a new scene
    where results.find_runs finds the run with its segmentation, maps and review state."""
    report = scenario.run_scenario(mrml_scene, tmp_path / "work", sys.executable)
    assert report["dice"] > 0.8
    assert report["regions"] >= 1 and report["flagged"].voxels > 0 and report["removed_then_undone"] > 0
    assert set(report["exported"]) == {"segmentation_corrected.nrrd", "flagged_for_review.nrrd", "entropy.nrrd",
                                       "mutual_information.nrrd", "expected_entropy.nrrd", "variance.nrrd",
                                       "scores.tsv"}
    export = tmp_path / "work" / "export"
    assert sorted(p.name for p in export.iterdir()) == sorted(report["exported"])
    scene_file = Path(report["scene"])
    assert scene_file.is_file() and scene_file.suffix == ".mrb"
    original = results.find_runs(mrml_scene)
    (name,) = original
    original_brain = original[name]["segmentation"]

    reference = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", mrml_scene)
                     if n.GetName() == "SegUncertainty test head")
    expected_mask = segments.segment_mask(original_brain,
                                          segments.segment_id_by_name(original_brain, "brain"), reference)
    new = slicer_headless.new_scene(tmp_path / "home2")
    persistence.load_scene(new, scene_file, slicer.app_logic)
    runs = results.find_runs(new)
    assert list(runs) == [name]
    roles = runs[name]
    assert {"segmentation", "scores", "map:entropy", "map:mutual_information", "map:variance"} <= set(roles)
    head = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", new)
                if n.GetName() == "SegUncertainty test head")
    segmentation = roles["segmentation"]
    brain_id = segments.segment_id_by_name(segmentation, "brain")
    assert np.array_equal(segments.segment_mask(segmentation, brain_id, head), expected_mask)
    assert np.array_equal(slicer.util.arrayFromVolume(roles["map:entropy"]),
                          sitk_array(tmp_path / "work" / "out" / "entropy.nrrd"))
    state = json.loads(segmentation.GetAttribute("SegUncertainty.Review"))
    assert state["map"] == "entropy" and state["order"] == "largest" and len(state["reviewed"]) == 1


def test_segments_carry_the_model_cards_terminology(mrml_scene, sample_run):
    """The card's SNOMED codes reach the segment as a Slicer terminology entry that Slicer's own
    deserializer reads back (category Anatomical Structure, type Brain), with the card's color."""
    import slicer

    out, _ = sample_run
    volume, _ = read_input(mrml_scene)
    run = results.import_results(mrml_scene, out, volume)
    segment = run.segmentation.GetSegmentation().GetSegment(segments.segment_id_by_name(run.segmentation, "brain"))
    import vtk

    entry = slicer.vtkSlicerTerminologyEntry()
    tag = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(str(tag), entry)
    assert (entry.GetTypeObject().GetCodingSchemeDesignator(), entry.GetTypeObject().GetCodeValue(),
            entry.GetTypeObject().GetCodeMeaning()) == ("SCT", "12738006", "Brain")
    assert entry.GetCategoryObject().GetCodeValue() == "123037004"
    assert np.allclose(segment.GetColor(), [0.98, 0.73, 0.60])
