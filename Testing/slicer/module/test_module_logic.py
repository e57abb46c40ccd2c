"""SegUncertaintyLogic (the module's logic, usable without the panel) on a real MRML scene.

Only slicer.app and the Qt half of Slicer's Python (ScriptedLoadableModule, parameterNodeWrapper, i18n)
are stood in for (slicer_app_fakes); the run, the nodes and the edits are real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from Testing.support import slicer_app_fakes, slicer_headless

slicer_app_fakes.install()
import slicer  # noqa: E402
from SegUncertaintyModule import environment, parameters, process  # noqa: E402
from SegUncertaintyMRML import (  # noqa: E402
    flagged_voxels,
    overlays,
    persistence,
    results,
    segments,
    volumes,
)

import SegUncertainty as module  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def new_logic():
    """Makes module logics; each is cleaned up after the test as the panel's cleanup() does in Slicer (a logic
    left observing a finished test's scene would crash VTK's garbage collection later)."""
    logics = []

    def make():
        logics.append(module.SegUncertaintyLogic())
        return logics[-1]

    yield make
    for logic in logics:
        logic.cleanup()


@pytest.fixture
def logic_with_run(mrml_scene, head_run, new_logic):
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    logic = new_logic()
    run = logic.importRun(head_run[1], volume)
    return logic, run, volume


def test_parameter_defaults_are_valid_choices(mrml_scene, new_logic):
    params = module.SegUncertaintyParameterNode(slicer.vtkMRMLScriptedModuleNode())
    assert params.method in process.METHOD_LABELS and params.device in process.DEVICES
    assert params.method == process.DEFAULT_METHOD == "mc_dropout"  # the command line's default
    assert params.uncertaintyMap in parameters.MAPS and params.colormap in overlays.COLORMAPS
    assert params.model in new_logic().modelNames()


def test_show_map_sets_the_foreground_colormap_and_legend(logic_with_run, mrml_scene):
    logic, run, volume = logic_with_run
    flagging = logic.showMap("mutual_information", "Viridis", 0.3)
    assert flagging.map_node is run.maps["mutual_information"]
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode", mrml_scene):
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == run.maps["mutual_information"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    display = run.maps["mutual_information"].GetDisplayNode()
    assert display.GetColorNodeID() == overlays.COLORMAPS["Viridis"]
    legends = {name: slicer.modules.colors.logic().GetColorLegendDisplayNode(node) for name, node in run.maps.items()}
    assert legends["mutual_information"].GetVisibility() and not legends["entropy"].GetVisibility()


def test_threshold_regions_correction_undo_and_review(logic_with_run, mrml_scene):
    logic, run, volume = logic_with_run
    flagging = logic.showMap("entropy", "Inferno", 0.5)
    threshold = flagging.threshold_for_percent(5.0)
    stats = logic.setThreshold(threshold, order="largest", minRegionMl=0.1)
    assert stats.voxels == int((flagging.values > np.float32(threshold)).sum())
    assert logic.navigator is None  # regions are found on demand
    region = logic.stepRegion(1)
    assert region is not None and region.volume_ml >= 0.1 and logic.navigator.regions[0] is region
    assert all(a.voxels >= b.voxels for a, b in zip(logic.navigator.regions, logic.navigator.regions[1:],
                                                       strict=False))
    red = mrml_scene.GetNodeByID("vtkMRMLSliceNodeRed")
    assert np.allclose([red.GetSliceToRAS().GetElement(i, 3) for i in range(3)], region.focus_ras)
    focus_ijk = np.linalg.solve(volumes.ijk_to_ras(volume), [*region.focus_ras, 1.0])[:3]
    i, j, k = np.round(focus_ijk).astype(int)
    assert logic.labels[k, j, i] == region.label, "navigation lands on a voxel of the region"

    brain = logic.structureSegmentId()
    before = segments.segment_mask(run.segmentation, brain, volume)
    region_mask = logic.labels == region.label
    added = logic.correctCurrentRegion("add")
    assert added == int((region_mask & ~before).sum())
    after = segments.segment_mask(run.segmentation, brain, volume)
    assert np.array_equal(after, before | region_mask)
    logic.undo()
    assert np.array_equal(segments.segment_mask(run.segmentation, brain, volume), before)

    logic.markReviewed()
    assert logic.navigator.remaining == len(logic.navigator.regions) - 1
    logic.setThreshold(threshold, order="largest", minRegionMl=0.1)
    logic.stepRegion(1)
    assert logic.navigator.reviewed == {region.label}, "reviewed marks come back for the same threshold"
    logic.setThreshold(threshold * 0.9, order="largest", minRegionMl=0.1)
    logic.stepRegion(1)
    assert logic.navigator.reviewed == set(), "a different threshold means different regions"


def test_correct_without_a_region_is_a_clear_error(logic_with_run):
    logic, _, _ = logic_with_run
    logic.showMap("entropy", "Inferno", 0.5)
    logic.setThreshold(logic.flagging.maximum + 1.0)  # nothing flagged
    assert logic.stepRegion(1) is None
    with pytest.raises(RuntimeError, match="region"):
        logic.correctCurrentRegion("remove")


def test_export_and_restore_after_scene_reload(logic_with_run, mrml_scene, tmp_path, new_logic):
    logic, run, volume = logic_with_run
    logic.showMap("entropy", "Inferno", 0.5)
    logic.setThreshold(logic.flagging.threshold_for_percent(2.0))
    written = logic.export(tmp_path / "export")
    assert {p.name for p in written} >= {"segmentation_corrected.nrrd", "flagged_for_review.nrrd", "scores.tsv"}
    persistence.save_scene(mrml_scene, tmp_path / "review.mrb")

    scene = slicer_headless.new_scene(tmp_path / "home2")
    persistence.load_scene(scene, tmp_path / "review.mrb", slicer.app_logic)
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    restored = new_logic().restoreRun(segmentation)
    assert restored is not None and restored.name == run.name
    assert set(restored.maps) == set(run.maps) and restored.scores is not None
    flagged_node = restored.segmentation.GetNodeReference(flagged_voxels.FLAGGED_REFERENCE)
    assert flagged_node is not None and results.find_runs(scene)[run.name]["flagged"] is flagged_node
    assert segments.segment_id_by_name(flagged_node, flagged_voxels.FLAGGED_SEGMENT) is not None
    assert segments.segment_id_by_name(restored.segmentation, flagged_voxels.FLAGGED_SEGMENT) is None
    assert new_logic().restoreRun(None) is None
    assert results.find_runs(scene)[run.name]["segmentation"] is segmentation


def test_backend_and_precision_survive_scene_save_and_reload(logic_with_run, mrml_scene, tmp_path):
    """The parameter node keeps the chosen backend and precision through a saved and reloaded scene (.mrb), and
    the reloaded run's results line is read from the manifest saved with its segmentation."""
    logic, run, _ = logic_with_run
    params = logic.getParameterNode()
    assert (params.backend, params.precision) == (process.DEFAULT_BACKEND, "auto")
    params.backend, params.precision = "openvino", "bf16"
    with pytest.raises(ValueError):
        params.backend = "tensorrt"  # not one of the library's backends
    persistence.save_scene(mrml_scene, tmp_path / "scene.mrb")

    scene = slicer_headless.new_scene(tmp_path / "home2")
    persistence.load_scene(scene, tmp_path / "scene.mrb", slicer.app_logic)
    node = scene.GetSingletonNode("SegUncertainty", "vtkMRMLScriptedModuleNode")
    reloaded = module.SegUncertaintyParameterNode(node)
    assert (reloaded.backend, reloaded.precision) == ("openvino", "bf16")
    restored = results.run_from_roles(run.name, results.find_runs(scene)[run.name])
    assert process.backend_line(restored.manifest) == process.backend_line(run.manifest) == \
        "Ran on torch fp32 (the reference)"


def test_a_whole_volume_model_runs_on_torch_whatever_was_chosen(mrml_scene, new_logic, tmp_path, monkeypatch):
    """backendFor: a MONAI bundle (no card) runs on torch at precision auto, with the reason; a card model
    gets the backend and precision asked for."""
    from Testing.support.monai_bundle_tiny import make_bundle

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    logic = new_logic()
    name = logic.addModel(str(make_bundle(tmp_path / "src")))
    backend, precision, reason = logic.backendFor(name, "openvino", "bf16")
    assert (backend, precision) == ("torch", "auto") and "MONAI bundle" in reason and "torch" in reason
    assert logic.backendFor("brainmask-t1", "openvino", "bf16") == ("openvino", "bf16", "")


def test_device_warning_estimates_cpu_time(logic_with_run):
    logic, _, volume = logic_with_run
    warning = logic.deviceWarning(volume, "brainmask-t1", "ensemble+mc_dropout", 10, "cpu")
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    litres = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2]) * (bounds[5] - bounds[4]) / 1e6
    expected = process.describe_estimate(process.cpu_estimate_s(litres, 30))  # 3 members x 10 samples
    assert "CPU" in warning and expected in warning
    assert logic.deviceWarning(volume, "brainmask-t1", "softmax", 10, "cuda") == ""


def test_nothing_is_missing_here_and_cancel_without_a_run_is_harmless(mrml_scene, new_logic):
    logic = new_logic()
    assert logic.missingPackages() == []
    assert not logic.isRunning()
    logic.cancel()


def test_library_dir_holds_the_library():
    assert (Path(environment.library_dir()) / "SegUncertaintyLib" / "cli" / "__init__.py").is_file()


def run_in_background(logic, volume, method, samples, cancel_after_first_progress=False, model="brainmask-t1"):
    """logic.start with the stand-in launcher; returns (run, error, stages seen)."""
    import threading

    seen, finished, first = [], {}, threading.Event()

    def on_progress(progress):
        seen.append(progress.stage)
        first.set()

    logic.start(volume, model, method, samples, "cpu", onProgress=on_progress,
                onFinished=lambda run, error: finished.update(run=run, error=error))
    assert logic.isRunning()
    if cancel_after_first_progress:
        slicer_app_fakes.run_event_loop(until=first.is_set, timeout=120)
        logic.cancel()
    slicer_app_fakes.wait_for_processes()
    return finished["run"], finished["error"], seen


def node_ids(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_background_run_imports_new_nodes_and_cleans_up(mrml_scene, head_run, tmp_path, new_logic):
    """start(): the real command line in a background process; on success the run's nodes are added and
    the temporary folder is gone."""
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    slicer.app.temporaryPath = str(temporary)
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    logic = new_logic()
    run, error, seen = run_in_background(logic, volume, "ensemble", 2)
    assert error is None and run is logic.run and not logic.isRunning()
    assert seen[0] == "load" and seen[-1] == "write"
    assert set(run.maps) >= {"entropy", "mutual_information", "variance"}
    assert list(temporary.iterdir()) == [], "the temporary input and outputs are removed"


def test_cancelled_run_leaves_the_scene_exactly_as_it_was(mrml_scene, head_run, tmp_path, new_logic):
    """Cancel after the first progress line: exit 130, 'Cancelled.', not one node added or changed."""
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    slicer.app.temporaryPath = str(temporary)
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    before, modified = node_ids(mrml_scene), volume.GetMTime()
    logic = new_logic()
    run, error, _ = run_in_background(logic, volume, "ensemble+mc_dropout", 20, cancel_after_first_progress=True)
    assert run is None and error == "Cancelled."
    assert node_ids(mrml_scene) == before and volume.GetMTime() == modified
    assert logic.run is None and list(temporary.iterdir()) == []


# -- models: the list and Add model... -----------------------------------------------------------------------
def broken_user_model(home: Path) -> Path:
    folder = home / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text('{"name": "broken"}')
    return folder


def test_model_list_shows_every_model_and_add_goes_through_the_catalog(mrml_scene, new_logic, tmp_path, monkeypatch):
    """With a broken model in the user's folder, the bundled model stays usable and the broken one is listed
    with the catalog's reason; addModel (a card.json path works too) installs with manage.add_model and the
    model is then listed and runnable by name; a failed add installs nothing and says why in one line."""
    from SegUncertaintyLib.models import catalog, manage
    from Testing.support.tiny_models import write_threshold_model

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    broken_user_model(tmp_path / "home")
    bundled = sorted(e.name for e in catalog.list_models() if e.error is None and e.name != "broken")
    assert "brainmask-t1" in bundled
    logic = new_logic()
    choices = {c.name: c for c in logic.modelChoices()}
    reason = next(e.error for e in catalog.list_models() if e.name == "broken")
    assert choices["brainmask-t1"].usable and choices["brainmask-t1"].argument == "brainmask-t1"
    assert not choices["broken"].usable and reason in choices["broken"].tooltip
    assert logic.modelNames() == bundled
    with pytest.raises(RuntimeError, match="broken"):
        logic.start(None, "broken", "softmax", 2, "cpu")
    assert not logic.isRunning()

    source = write_threshold_model(tmp_path / "src")
    assert logic.addModel(str(source / "card.json")) == "threshold-src"
    assert (catalog.user_model_dir() / "threshold-src" / "card.json").is_file()
    choices = {c.name: c for c in logic.modelChoices()}
    assert choices["threshold-src"].usable and "2 member(s)" in choices["threshold-src"].tooltip
    assert logic.modelNames() == [*bundled, "threshold-src"]

    before = sorted(p.name for p in catalog.user_model_dir().iterdir())
    with pytest.raises(RuntimeError) as again:
        logic.addModel(str(source))
    with pytest.raises(catalog.ModelError) as library:
        manage.add_model(source)
    assert str(again.value) == str(library.value) and "\n" not in str(again.value)
    with pytest.raises(RuntimeError, match="not a model folder"):
        logic.addModel(str(tmp_path))
    assert sorted(p.name for p in catalog.user_model_dir().iterdir()) == before, "a failed add installs nothing"
    assert logic.modelChoice("threshold-src").argument == "threshold-src"
    assert [c.name for c in logic.modelChoices("gone")][-1] == "gone", "the parameter's model is always listed"
    assert not logic.modelChoices("gone")[-1].usable


# -- statistics after the Segment Editor's own Undo / Redo / edits ------------------------------------------
def test_statistics_follow_the_segment_editors_own_undo_redo_and_edits(logic_with_run, mrml_scene):
    """The embedded Segment Editor undoes with its own vtkSlicerSegmentEditorLogic (qMRMLSegmentEditorWidget::undo
    calls Logic->Undo()), not through the module: the flagged statistics must follow anyway."""
    from SegUncertaintyMRML import corrections

    logic, run, volume = logic_with_run
    calls = []
    logic.onStatisticsChanged = lambda: calls.append(logic.stats)
    flagging = logic.showMap("entropy", "Inferno", 0.5)
    logic.setThreshold(flagging.threshold_for_percent(5.0))
    editor = corrections.editor_logic(mrml_scene, run.segmentation, volume)  # the Segment Editor's own logic
    brain = logic.structureSegmentId()

    def inside() -> int:
        return int((flagging.mask & segments.segment_mask(run.segmentation, brain, volume)).sum())

    before = inside()
    logic.stepRegion(1)
    logic.correctCurrentRegion("remove", saveState=editor.SaveStateForUndo)
    assert logic.stats.inside_segmentation == inside() < before and calls
    editor.Undo()  # the editor's Undo button
    assert logic.stats.inside_segmentation == inside() == before
    editor.Redo()
    assert logic.stats.inside_segmentation == inside() < before
    n = len(calls)
    logic.cleanup()
    editor.Undo()
    assert len(calls) == n and inside() == before, "after cleanup the logic observes nothing"


@pytest.mark.nnunet
def test_an_installed_nnunet_model_runs_from_the_panel(mrml_scene, tmp_path, monkeypatch, new_logic):
    """Issue 14's 'the same works from the Slicer module': an nnU-Net v2 folder added through addModel is
    listed usable, gets a CPU estimate, and a background run with its folds as the ensemble imports maps whose
    mean probability equals the mean of nnunetv2's own per-fold predictions (the oracle)."""
    import SimpleITK as sitk

    from Testing.support.nnunet_tiny import ct_like_image, make_nnunet_model, nnunet_reference

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    slicer.app.temporaryPath = str(temporary)
    folder, weights = make_nnunet_model(tmp_path / "src")
    logic = new_logic()
    name = logic.addModel(str(folder))
    choice = logic.modelChoice(name)
    assert choice.usable and choice.argument != name  # not a card: the command line gets its folder
    image = ct_like_image()
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    volume = volumes.read_volume(mrml_scene, tmp_path / "ct.nrrd", "ct")
    assert "CPU" in logic.deviceWarning(volume, name, "ensemble", 2, "cpu")
    run, error, seen = run_in_background(logic, volume, "ensemble", 2, model=name)
    assert error is None and run is logic.run, error
    assert set(run.maps) >= {"entropy", "mutual_information", "variance"}
    oracle = np.mean([nnunet_reference(folder, w, image) for w in weights], axis=0)  # (C, z, y, x) per fold
    probability = slicer.util.arrayFromVolume(run.probabilities[run.manifest["labels"]["1"]])
    assert np.mean(np.abs(probability - oracle[1]) <= 1e-3) >= 0.99


def test_an_onnx_model_is_run_by_name_like_any_card_model(mrml_scene, new_logic, tmp_path, monkeypatch):
    """The panel passes a model with a card (card or ONNX format) by name, other formats by folder."""
    import json

    from SegUncertaintyLib.models.card import write_card

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "models" / "graph"
    folder.mkdir(parents=True)
    (folder / "net.onnx").write_bytes(b"an ONNX graph")  # listing reads the card only
    write_card({"name": "graph-model", "labels": {"0": "background", "1": "fg"},
                "preprocessing": {"spacing_mm": [2, 2, 2], "intensity": {"method": "none"}},
                "patch_size": [16, 16, 16], "methods": ["softmax"], "architecture": {"type": "onnx"},
                "members": [{"file": "net.onnx", "sha256": ""}]}, folder)
    assert json.loads((folder / "card.json").read_text())["architecture"]["type"] == "onnx"
    choices = {c.name: c for c in new_logic().modelChoices()}
    assert choices["graph-model"].usable and "ONNX (user)" in choices["graph-model"].tooltip
    assert choices["graph-model"].argument == "graph-model"


# -- installing packages: never replace the PyTorch extension's torch ----------------------------------------
def test_packages_install_with_the_installed_torch_pinned_and_the_format_package(mrml_scene, new_logic, tmp_path,
                                                                                  monkeypatch):
    """Missing packages go to slicer.packaging.pip_install with a constraints file (Slicer 5.12's
    ``constraints=``, passed to pip as ``-c``) that pins the installed torch; a model whose format needs a
    package (nnunetv2, onnxruntime; here a card model given a package that is not installed) gets it too,
    offered by the module rather than by a pip hint for the library's extras."""
    import importlib.metadata

    from SegUncertaintyModule import models_logic

    from Testing.support.tiny_models import write_threshold_model

    monkeypatch.setitem(models_logic.PIP_REQUIREMENTS, "absent_package_x", "absent-package-x>=1")
    monkeypatch.setitem(models_logic.FORMAT_REQUIREMENTS, "card", ("absent_runtime_y", "absent-runtime-y>=2"))
    slicer.app.temporaryPath = str(tmp_path)
    calls = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: True, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements, **kwargs: calls.append(
        (requirements, Path(kwargs["constraints"]).read_text())), raising=False)
    model = write_threshold_model(tmp_path / "model")
    assert models_logic.ModelsLogic.modelFormat(str(model)) == "card"
    assert new_logic().ensureDependencies(ask=True, model=str(model)) is False  # still absent: not ready
    (requirements, constraints), = calls
    assert requirements == ["absent-package-x>=1", "absent-runtime-y>=2"]
    assert f"torch=={importlib.metadata.version('torch')}" in constraints.splitlines()


# -- a transformed input ---------------------------------------------------------------------------------------
def test_a_transformed_inputs_results_follow_its_transform(mrml_scene, head_run, new_logic):
    """The results hold the input's own geometry: every run node, the flagged one included, goes under the
    input's parent transform, and stepping to a region centres the views on its world position."""
    import vtk

    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.array([40.0, -25.0, 10.0])
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, shift[axis])
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    logic = new_logic()
    run = logic.importRun(head_run[1], volume)
    flagging = logic.showMap("entropy", "Inferno", 0.5)
    logic.setThreshold(flagging.threshold_for_percent(5.0))
    nodes = [n for n in (*run.all_nodes(), flagging.flagged_node) if n and n.IsA("vtkMRMLTransformableNode")]
    assert len(nodes) >= 5 and all(n.GetTransformNodeID() == transform.GetID() for n in nodes)
    region = logic.stepRegion(1)
    world = np.asarray(region.focus_ras) + shift
    for slice_node in slicer.util.getNodesByClass("vtkMRMLSliceNode", mrml_scene):
        centre = np.array([slice_node.GetSliceToRAS().GetElement(axis, 3) for axis in range(3)])
        assert np.allclose(centre, world, atol=1e-3), slice_node.GetName()
