"""The module's panel (SegUncertaintyWidget) as it will behave in Slicer: built from the real .ui, bound to a
real parameter node on a real MRML scene, with the stand-ins of slicer_app_fakes / slicer_qt_fakes for what
only the application has. Those reproduce what caused earlier bugs:

- the PythonSlicer launcher: a real launcher process with the interpreter as its child, forwarding no signal;
- launchConsoleProcess(blocking=False): callbacks only on the main thread, when the event loop polls (100 ms);
- connectGui: clears and refills combo boxes, writes every parameter to its widget, observes the node in the
  order observers were added; widgets emit Qt's signals (clear() emits currentIndexChanged(-1), clamping
  emits valueChanged).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from Testing.support import slicer_app_fakes

slicer_app_fakes.install()
import SegUncertaintyModule  # noqa: E402
import SegUncertaintyMRML  # noqa: E402
import slicer  # noqa: E402
from SegUncertaintyModule import environment, process, review_logic  # noqa: E402
from SegUncertaintyMRML import flagged_voxels, segments, volumes  # noqa: E402

import SegUncertainty as module  # noqa: E402

pytestmark = pytest.mark.slow

_widgets: list = []


@pytest.fixture(autouse=True)
def clean_up_widgets():
    """Each panel is cleaned up as Slicer does when the module is unloaded (observers removed)."""
    yield
    while _widgets:
        widget = _widgets.pop()
        if widget.logic is not None:
            widget.cleanup()


def make_widget():
    """A panel as Slicer makes it when the user first selects the module: setup(), then enter()."""
    widget = module.SegUncertaintyWidget()
    widget.setup()
    _widgets.append(widget)
    if widget.logic is not None:
        slicer_app_fakes.enter_module(widget)
    return widget


@pytest.fixture
def widget_with_run(mrml_scene, head_run):
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    widget = make_widget()
    widget._parameterNode.inputVolume = volume
    run = widget.logic.importRun(head_run[1], volume)
    widget.onFinished(run, None)
    return widget, run, volume


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree_stops(tree, timeout: float = 15.0) -> bool:
    """Whether every process of ``tree`` has ended (zombies count as ended) within ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while any(alive(p) for p in tree):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def node_ids(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


# -- 1. cancel -------------------------------------------------------------------------------------------------
def test_cancel_stops_the_launcher_and_its_child_and_reports_cancelled(mrml_scene, head_run, tmp_path, monkeypatch):
    """Press Segment, then Cancel after the first progress line: every process of the tree is gone within
    seconds, the button says 'Cancelling...' (disabled) at once, a second press starts nothing, the stage
    reads 'Cancelled.', no error box, and the scene is exactly as it was."""
    launcher = slicer_app_fakes.write_launcher(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{launcher.parent}:{__import__('os').environ['PATH']}")
    assert environment.python_executable() == str(launcher)
    slicer.app.temporaryPath = str(tmp_path)
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    widget = make_widget()
    params = widget._parameterNode
    params.inputVolume, params.method, params.samples = volume, "ensemble+mc_dropout", 40
    before, modified = node_ids(mrml_scene), volume.GetMTime()
    slicer_app_fakes.shown_messages.clear()

    widget.ui.applyButton.clicked.emit()
    assert widget.ui.applyButton.text == "Cancel"
    slicer_app_fakes.run_event_loop(until=lambda: widget.ui.progressBar.value > 0, timeout=120)
    tree = [psutil.Process(widget.logic.process.pid)]
    tree += tree[0].children(recursive=True)
    assert len(tree) >= 2, "the launcher runs the interpreter as its child"

    widget.ui.applyButton.clicked.emit()  # Cancel
    assert (widget.ui.applyButton.text, widget.ui.applyButton.enabled) == ("Cancelling...", False)
    widget.ui.applyButton.clicked.emit()  # a second press while cancelling starts nothing
    assert widget.logic.runState() == "cancelling"
    assert tree_stops(tree[1:]), "the interpreter, the launcher's child, still runs"
    slicer_app_fakes.run_event_loop(until=lambda: not widget.logic.isRunning(), timeout=30)
    assert widget.ui.stageLabel.text == "Cancelled."
    assert widget.ui.applyButton.text == "Segment with uncertainty" and widget.ui.applyButton.enabled
    assert slicer_app_fakes.shown_messages == []
    assert node_ids(mrml_scene) == before and volume.GetMTime() == modified
    assert list(tmp_path.glob("SegUncertainty-*")) == []


def test_cleanup_and_scene_close_stop_the_child(mrml_scene, head_run, tmp_path, monkeypatch):
    launcher = slicer_app_fakes.write_launcher(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{launcher.parent}:{__import__('os').environ['PATH']}")
    slicer.app.temporaryPath = str(tmp_path)
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    for stop in ("cleanup", "close"):
        widget = make_widget()
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.samples = 40
        widget.onApplyButton()
        slicer_app_fakes.run_event_loop(until=lambda w=widget: w.ui.progressBar.value > 0, timeout=120)
        tree = psutil.Process(widget.logic.process.pid).children(recursive=True)
        assert tree
        if stop == "cleanup":
            widget.cleanup()
        else:
            mrml_scene.Clear(0)
        assert tree_stops(tree), stop
        slicer_app_fakes.wait_for_processes(timeout=30)
        assert widget.logic.run is None
        volume = volumes.read_volume(mrml_scene, head_run[0], "head") if stop == "close" else volume


# -- 2, 3. the parameter node is the single source of truth -----------------------------------------------
def test_reentering_and_colormap_keep_the_threshold_and_the_referral(widget_with_run):
    widget, run, _ = widget_with_run
    params, logic = widget._parameterNode, widget.logic
    flagging = logic.flagging
    assert params.threshold == pytest.approx(flagging.threshold_for_percent(review_logic.DEFAULT_FLAGGED_PERCENT))
    widget.ui.thresholdSlider.value = params.threshold * 0.8  # the user moves the slider
    user_threshold = params.threshold
    assert flagging.threshold == pytest.approx(user_threshold), "a new threshold moves the flagged voxels"
    logic.stepRegion(1)
    navigator, chart = logic.navigator, logic.curveChart()

    slicer_app_fakes.exit_module(widget)
    slicer_app_fakes.enter_module(widget)  # connectGui clears and refills every combo box
    widget.ui.colormapComboBox.currentIndex = widget.ui.colormapComboBox.items.index("Viridis")
    assert params.colormap == "Viridis"
    assert run.maps["entropy"].GetDisplayNode().GetColorNodeID().endswith("Viridis.txt")
    assert logic.flagging is flagging, "no referral rebuild"
    assert params.threshold == user_threshold and flagging.threshold == user_threshold
    assert logic.navigator is navigator and logic.chart is chart

    widget.ui.mapComboBox.currentIndex = widget.ui.mapComboBox.items.index("variance")
    assert logic.flagging is not flagging and logic.flagging.map_node is run.maps["variance"]
    assert params.threshold == pytest.approx(logic.flagging.threshold_for_percent(review_logic.DEFAULT_FLAGGED_PERCENT))
    assert widget.ui.thresholdSlider.value == pytest.approx(params.threshold)


def test_smallest_region_takes_effect_at_once(widget_with_run):
    widget, _, _ = widget_with_run
    widget.ui.minRegionSpinBox.value = 0.4
    assert widget.logic.minRegionMl == 0.4
    widget.logic.stepRegion(1)
    assert all(r.volume_ml >= 0.4 - 1e-9 for r in widget.logic.navigator.regions)
    widget.ui.regionOrderComboBox.currentIndex = widget.ui.regionOrderComboBox.items.index("most_uncertain")
    assert widget.logic.order == "most_uncertain" and widget.logic.navigator is None


def test_exit_removes_the_parameter_node_observer(widget_with_run):
    widget, _, _ = widget_with_run
    params = widget._parameterNode
    slicer_app_fakes.exit_module(widget)
    calls = []
    widget.logic.applyParameters = lambda p: calls.append(p) or set()
    params.colormap = "Viridis"
    assert calls == []


# -- 4. closing and reloading the scene --------------------------------------------------------------------
def test_scene_close_resets_and_a_reloaded_run_is_restored(widget_with_run, tmp_path):
    from SegUncertaintyMRML import persistence

    widget, run, _ = widget_with_run
    widget.ui.thresholdSlider.value = widget._parameterNode.threshold * 0.9
    saved_threshold = widget._parameterNode.threshold
    persistence.save_scene(slicer.mrmlScene, tmp_path / "review.mrb")
    slicer.mrmlScene.Clear(0)
    assert widget.logic.run is None and widget.logic.flagging is None
    assert not any(getattr(widget.ui, n).enabled for n in ("resultsCollapsibleButton", "referralCollapsibleButton",
                                                           "exportCollapsibleButton"))
    persistence.load_scene(slicer.mrmlScene, tmp_path / "review.mrb", slicer.app_logic)  # -> EndImportEvent
    assert widget.logic.run is not None and widget.logic.run.name == run.name
    assert widget.ui.referralCollapsibleButton.enabled
    assert widget._parameterNode.threshold == pytest.approx(saved_threshold), "the saved threshold is kept"


# -- 5. undo leaves the flagged voxels alone ---------------------------------------------------------------
def test_undo_after_correction_and_threshold_change_keeps_display_and_statistics(widget_with_run):
    widget, run, volume = widget_with_run
    logic, params = widget.logic, widget._parameterNode
    logic.stepRegion(1)
    brain = logic.structureSegmentId()
    before = segments.segment_mask(run.segmentation, brain, volume)
    logic.correctCurrentRegion("remove")
    widget.ui.thresholdSlider.value = params.threshold * 0.7
    logic.undo()
    flagging = logic.flagging
    flagged = segments.segment_mask(flagging.flagged_node, flagging.flagged_segment_id, volume)
    assert np.array_equal(flagged, flagging.values > np.float32(params.threshold)), "display = threshold"
    assert logic.stats.voxels == int(flagged.sum())
    assert np.array_equal(segments.segment_mask(run.segmentation, brain, volume), before)
    assert logic.stats.inside_segmentation == int((flagged & before).sum())
    assert segments.segment_id_by_name(run.segmentation, flagged_voxels.FLAGGED_SEGMENT) is None
    logic.redo()
    after = segments.segment_mask(run.segmentation, brain, volume)
    assert not np.array_equal(after, before) and logic.stats.inside_segmentation == int((flagged & after).sum())


# -- 6, 7. self-test and a run without scores ----------------------------------------------------------------
def test_self_test_without_torch_is_skipped_not_failed(mrml_scene, monkeypatch):
    monkeypatch.setattr(module.SegUncertaintyLogic, "missingPackages", staticmethod(lambda: ["torch"]))
    test = module.SegUncertaintyTest()
    test.runTest()  # returns: no SkipTest, no failure
    assert "skipped" in test.messages[-1] and "torch" in test.messages[-1]


def test_self_test_goes_through_the_buttons_path(mrml_scene, tmp_path, monkeypatch):
    """The self-test starts the run with logic.start (non-blocking, callbacks on the event loop)."""
    slicer.app.temporaryPath = str(tmp_path)
    started = []
    real_start = module.SegUncertaintyLogic.start
    monkeypatch.setattr(module.SegUncertaintyLogic, "start",
                        lambda self, *a, **k: started.append(a) or real_start(self, *a, **k))
    test = module.SegUncertaintyTest()
    test.runTest()
    assert len(started) == 1 and test.messages[-1].startswith("Test passed")


def test_a_run_without_scores_table_shows_an_empty_table(widget_with_run):
    widget, run, _ = widget_with_run
    slicer.mrmlScene.RemoveNode(run.scores)
    run.scores = None
    widget.showScores(None)
    assert ("setMRMLTableNode", None) in widget.ui.scoresTableView.calls


def test_older_slicer_is_refused_with_a_message(mrml_scene, monkeypatch):
    monkeypatch.setattr(slicer.app, "minorVersion", 10)
    slicer_app_fakes.shown_messages.clear()
    widget = make_widget()
    assert widget.logic is None and "5.12" in slicer_app_fakes.shown_messages[-1][1]
    slicer_app_fakes.enter_module(widget)  # switching modules and unloading raise nothing
    slicer_app_fakes.exit_module(widget)
    widget.cleanup()
    logic = module.SegUncertaintyLogic()
    try:
        with pytest.raises(RuntimeError, match="5.12"):
            logic.start(None, "brainmask-t1", "softmax", 2, "cpu")
    finally:
        logic.cleanup()


@pytest.fixture
def restored_modules():
    """The module and its parts as they were before a test that reloads them (reload changes them in place)."""
    names = ["SegUncertainty", *(f"SegUncertaintyModule.{part}" for part in SegUncertaintyModule.PARTS),
             *(f"SegUncertaintyMRML.{part}" for part in SegUncertaintyMRML.PARTS)]
    saved = {name: (sys.modules[name], dict(sys.modules[name].__dict__)) for name in names}
    yield
    for name, (mod, namespace) in saved.items():
        mod.__dict__.clear()
        mod.__dict__.update(namespace)
        sys.modules[name] = mod


def test_reload_builds_the_panel_and_logic_from_the_reloaded_parts(mrml_scene, restored_modules):
    """Developer mode's Reload executes SegUncertainty.py again; the classes it then defines must be built
    from the parts' new code, not from the parts imported before the reload."""
    widget = make_widget()
    old_logic_class, old_run_panel = module.SegUncertaintyLogic, sys.modules["SegUncertaintyModule.run_panel"].RunPanel
    old_referral = sys.modules["SegUncertaintyMRML.flagged_voxels"].Referral
    widget.onReload()
    assert sys.modules["SegUncertaintyMRML.flagged_voxels"].Referral is not old_referral, "the MRML glue is reloaded"
    reloaded = sys.modules["SegUncertainty"]
    parts = {part: sys.modules[f"SegUncertaintyModule.{part}"] for part in SegUncertaintyModule.PARTS}
    assert reloaded is not module and reloaded.SegUncertaintyLogic is not old_logic_class
    assert reloaded.SegUncertaintyLogic is parts["logic"].SegUncertaintyLogic
    assert parts["run_panel"].RunPanel is not old_run_panel
    sections = {"models_panel": "ModelsPanel", "run_panel": "RunPanel", "review_panel": "ReviewPanel",
                "cohort_panel": "CohortPanel"}
    for part, name in sections.items():
        assert getattr(parts[part], name) in reloaded.SegUncertaintyWidget.__mro__, name
    for part, name in {p.replace("panel", "logic"): n.replace("Panel", "Logic") for p, n in sections.items()}.items():
        assert getattr(parts[part], name) in reloaded.SegUncertaintyLogic.__mro__, name
    assert parts["logic"].SegUncertaintyParameterNode is parts["parameters"].SegUncertaintyParameterNode
    assert parts["run_logic"].slicerVersionProblem is parts["environment"].slicerVersionProblem


@pytest.mark.parametrize("package", [SegUncertaintyModule, SegUncertaintyMRML])
def test_reload_order_puts_each_part_after_the_parts_it_imports(package):
    """PARTS names every file of the package, each after those it imports."""
    folder = Path(package.__file__).parent
    assert set(package.PARTS) == {p.stem for p in folder.glob("*.py")} - {"__init__"}
    for index, part in enumerate(package.PARTS):
        tree = ast.parse((folder / f"{part}.py").read_text())
        relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1]
        imported = {node.module for node in relative if node.module} | {
            alias.name for node in relative if node.module is None for alias in node.names}  # from . import x
        assert imported <= set(package.PARTS[:index]), (part, imported)


# -- the model list and Add model... ------------------------------------------------------------------------
def test_model_list_and_add_model_button_keep_the_parameter_the_source_of_truth(mrml_scene, tmp_path, monkeypatch):
    """Every installed model is listed (a broken one greyed out with its reason); Add model... installs through
    the logic, selects the new model through the parameter, shows a failure's one line; refilling the list
    (on re-entry) never changes the selected model."""
    from Testing.support.tiny_models import write_threshold_model

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    broken = tmp_path / "home" / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "card.json").write_text('{"name": "broken"}')
    from SegUncertaintyLib.models import catalog

    bundled = sorted(e.name for e in catalog.list_models() if e.error is None)  # before the broken one counts
    broken_index = len(bundled)
    widget = make_widget()
    combo, params = widget.ui.modelComboBox, widget._parameterNode
    assert combo.items == [*bundled, "broken"] and combo.currentText == params.model == "brainmask-t1"
    assert combo.disabled == {broken_index} and "Cannot be used" in combo.itemData(broken_index, 3)  # ToolTipRole

    slicer_app_fakes.shown_messages.clear()
    slicer_app_fakes.file_dialog_answer[0] = str(tmp_path)  # not a model folder
    widget.ui.addModelButton.clicked.emit()
    kind, text = slicer_app_fakes.shown_messages[-1]
    assert kind == "errorDisplay" and "not a model folder" in text and "\n" not in text
    assert combo.items == [*bundled, "broken"] and params.model == "brainmask-t1"

    slicer_app_fakes.file_dialog_answer[0] = str(write_threshold_model(tmp_path / "src"))
    widget.ui.addModelButton.clicked.emit()
    assert combo.items == [*bundled, "broken", "threshold-src"]  # bundled first, then by folder name
    assert params.model == combo.currentText == "threshold-src" and combo.disabled == {broken_index}

    slicer_app_fakes.exit_module(widget)
    slicer_app_fakes.enter_module(widget)  # the list is refilled: clear() and addItem emit; the parameter stays
    assert params.model == combo.currentText == "threshold-src"
    slicer_app_fakes.file_dialog_answer[0] = ""  # Cancel
    widget.ui.addModelButton.clicked.emit()
    assert params.model == "threshold-src" and len(slicer_app_fakes.shown_messages) == 1


# -- the panel's life in Slicer: Close Scene, module switches, effects, re-entry -----------------------------
def test_undo_through_the_embedded_editor_works_after_close_scene(widget_with_run, tmp_path):
    """Close Scene removes the editor node; the panel must select a new one (as Slicer's Segment Editor module
    does on EndClose / EndImport), so that a correction saved in the embedded editor's history is reverted by
    the panel's Undo button, which calls the editor's undo. One editor node, whatever the number of runs."""
    from SegUncertaintyMRML import persistence

    widget, run, _ = widget_with_run
    persistence.save_scene(slicer.mrmlScene, tmp_path / "review.mrb")
    slicer.mrmlScene.Clear(0)
    persistence.load_scene(slicer.mrmlScene, tmp_path / "review.mrb", slicer.app_logic)
    logic, editor = widget.logic, widget.ui.segmentEditorWidget
    assert editor.mrmlSegmentEditorNode().GetScene() is slicer.mrmlScene
    assert editor.segmentationNode() is logic.run.segmentation
    brain, volume = logic.structureSegmentId(), logic.inputVolume
    before = segments.segment_mask(logic.run.segmentation, brain, volume)
    widget.ui.nextRegionButton.clicked.emit()
    widget.ui.removeRegionButton.clicked.emit()
    assert "Undo reverts" in widget.ui.regionLabel.text
    assert not np.array_equal(segments.segment_mask(logic.run.segmentation, brain, volume), before)
    widget.ui.undoButton.clicked.emit()
    assert np.array_equal(segments.segment_mask(logic.run.segmentation, brain, volume), before)
    assert len(slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode")) == 1


def test_leaving_the_module_stops_the_effect_and_later_effects_are_listed(widget_with_run):
    widget, _, _ = widget_with_run
    editor = widget.ui.segmentEditorWidget
    editor.setActiveEffect("Paint")
    slicer_app_fakes.exit_module(widget)
    assert editor.activeEffect() is None and ("removeViewObservations",) in editor.calls
    slicer_app_fakes.effect_factory.register("Local threshold")  # an extension registers an effect later
    assert editor.calls.count(("updateEffectList",)) == 1
    widget.cleanup()
    slicer_app_fakes.effect_factory.register("Another")
    assert editor.calls.count(("updateEffectList",)) == 1, "cleanup disconnects"


def test_reentry_keeps_the_threshold_range_and_export_defaults_to_the_scene_folder(widget_with_run):
    widget, _, _ = widget_with_run
    maximum = max(widget.logic.flagging.maximum, widget._parameterNode.threshold)
    assert widget.ui.thresholdSlider.maximum == pytest.approx(maximum)
    slicer_app_fakes.exit_module(widget)
    slicer_app_fakes.enter_module(widget)  # connectGui sets the slider to the parameter's range, 0-10
    assert widget.ui.thresholdSlider.maximum == pytest.approx(maximum)
    assert widget.ui.exportDirectoryButton.directory == slicer.app.defaultScenePath
    with pytest.raises(AttributeError):
        getattr(widget.ui.exportDirectoryButton, "notAQtMethod")  # noqa: B009  (PythonQt: no such attribute)


def test_methods_inputs_and_score_tooltips_in_the_panel(widget_with_run):
    """Readable method names bound to the parameter; the input list offers neither label maps nor a run's
    maps; the scores' tooltips survive the table view rebuilding its items."""
    from SegUncertaintyLib.core.methods import METHOD_LABELS

    widget, run, volume = widget_with_run
    combo, params = widget.ui.methodComboBox, widget._parameterNode
    assert combo.items == list(METHOD_LABELS.values()) and combo.currentText == METHOD_LABELS[params.method]
    combo.currentIndex = combo.items.index("Ensemble + TTA")
    assert params.method == "ensemble+tta"
    params.method = "softmax"
    assert combo.currentText == "Softmax (one pass)"

    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    listed = widget.ui.inputVolumeSelector.listedNodes()
    assert volume in listed and labelmap not in listed and not set(run.maps.values()) & set(listed)

    view = widget.ui.scoresTableView
    first = view.tableModel().item(0, 0).toolTip()
    assert first
    run.scores.Modified()  # qMRMLTableModel makes new items
    assert view.tableModel().item(0, 0).toolTip() == first


def test_a_raising_progress_display_does_not_stop_the_run(mrml_scene, head_run, tmp_path):
    """Slicer's poll stops for good when a callback raises; the logic's own line callback must not."""
    slicer.app.temporaryPath = str(tmp_path)
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    logic = module.SegUncertaintyLogic()
    finished = {}

    def broken(progress):
        raise ValueError("a display that fails")

    try:
        logic.start(volume, "brainmask-t1", "softmax", 2, "cpu", onProgress=broken, onLog=broken,
                    onFinished=lambda run, error: finished.update(run=run, error=error))
        slicer_app_fakes.run_event_loop(until=lambda: bool(finished), timeout=240)
    finally:
        logic.cleanup()
    assert finished["error"] is None and finished["run"] is not None


def test_the_event_loop_stops_polling_a_process_whose_callback_raised():
    """The stand-in behaves as Slicer's checkOutput: an exception ends that process's polling."""
    def raising(line):
        raise RuntimeError(line)

    done = []
    slicer_app_fakes.launch_console_process([sys.executable, "-c", "print('one'); print('two')"], blocking=False,
                                           logCallback=raising, completedCallback=done.append)
    with pytest.raises(RuntimeError, match="one"):
        slicer_app_fakes.run_event_loop(timeout=30)
    assert slicer_app_fakes._pending == [] and done == []


# -- the inference backend (issue 23 §1) ------------------------------------------------------------------
def run_from_the_panel(widget, timeout: float = 300) -> None:
    """Press Segment and run the event loop until the run has finished (its onFinished has run)."""
    widget.ui.applyButton.clicked.emit()
    assert widget.logic.isRunning()
    slicer_app_fakes.run_event_loop(until=lambda: not widget.logic.isRunning(), timeout=timeout)


def test_the_chosen_backend_runs_the_model_and_the_results_line_reads_its_manifest(mrml_scene, head_run, tmp_path):
    """Backend and precision are combos of the library's choices bound to the parameters, with a tooltip saying
    what auto does; the user's choice reaches the command line (the run's manifest records onnxruntime fp32)
    and the results area shows the manifest's line with its guard figure."""
    from SegUncertaintyLib.core.options import BACKENDS, PRECISIONS

    slicer.app.temporaryPath = str(tmp_path)
    volume = volumes.read_volume(mrml_scene, head_run[0], "head")
    widget = make_widget()
    params, backend, precision = widget._parameterNode, widget.ui.backendComboBox, widget.ui.precisionComboBox
    assert (backend.items, precision.items) == (list(BACKENDS), list(PRECISIONS))
    assert (backend.currentText, precision.currentText) == (process.DEFAULT_BACKEND, "auto")
    assert backend.enabled and backend.toolTip == process.BACKEND_TOOLTIP and "cache" in backend.toolTip
    assert precision.enabled and precision.toolTip == process.PRECISION_TOOLTIP
    assert not widget.ui.backendLabel.visible  # no run yet

    backend.currentIndex = backend.items.index("onnxruntime")  # the user picks it
    precision.currentIndex = precision.items.index("fp32")
    assert (params.backend, params.precision) == ("onnxruntime", "fp32")
    params.inputVolume, params.method, params.device = volume, "softmax", "cpu"
    run_from_the_panel(widget)
    assert widget.ui.stageLabel.text.startswith("Done"), widget.ui.stageLabel.text
    inference = widget.logic.run.manifest["inference"]
    assert (inference["backend"], inference["precision"], inference["chosen_by"]) == ("onnxruntime", "fp32",
                                                                                        "requested")
    assert 0 <= inference["max_abs_dp"] <= 1e-3
    assert widget.ui.backendLabel.visible and widget.ui.backendLabel.text == \
        f"Ran on onnxruntime fp32 (max |Δp| {inference['max_abs_dp']:.2g} against torch fp32)"

    slicer.mrmlScene.Clear(0)  # Close Scene: the run is gone, and so is its line
    assert not widget.ui.backendLabel.visible and widget.ui.backendLabel.text == ""


def test_a_whole_volume_model_sets_the_backend_to_torch_and_disables_the_combos(mrml_scene, tmp_path, monkeypatch):
    """Selecting a MONAI bundle (no card: whole-volume) after choosing openvino bf16 sets the parameters to torch
    and auto, disables both combos with the reason as tooltip, and the run succeeds (the library refuses
    another backend for it, exit 2); its manifest has no inference entry, so no results line. Back on a card
    model the combos are enabled with their tooltips, and the user chooses again."""
    import SimpleITK as sitk

    from Testing.support.monai_bundle_tiny import make_bundle
    from Testing.support.nnunet_tiny import ct_like_image

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    slicer.app.temporaryPath = str(tmp_path)
    sitk.WriteImage(ct_like_image((12, 14, 16)), str(tmp_path / "ct.nrrd"))
    volume = volumes.read_volume(mrml_scene, tmp_path / "ct.nrrd", "ct")
    widget = make_widget()
    params, backend, precision = widget._parameterNode, widget.ui.backendComboBox, widget.ui.precisionComboBox
    params.backend, params.precision = "openvino", "bf16"
    assert (backend.currentText, precision.currentText, backend.enabled) == ("openvino", "bf16", True)

    slicer_app_fakes.file_dialog_answer[0] = str(make_bundle(tmp_path / "src"))
    widget.ui.addModelButton.clicked.emit()  # Add model...: the new model is selected
    assert params.model == "tiny_bundle"
    assert (params.backend, params.precision) == ("torch", "auto")
    assert (backend.currentText, precision.currentText) == ("torch", "auto")
    assert not backend.enabled and not precision.enabled
    assert "MONAI bundle" in backend.toolTip and "run on torch" in backend.toolTip
    assert precision.toolTip == backend.toolTip

    params.inputVolume, params.method, params.samples, params.device = volume, "mc_dropout", 2, "cpu"
    run_from_the_panel(widget)
    assert widget.ui.stageLabel.text.startswith("Done"), widget.ui.stageLabel.text
    assert set(widget.logic.run.manifest["inference"]) == {"temperature", "cpu_threads"}
    assert widget.logic.run.manifest["inference"]["temperature"] == 1.0 and not widget.ui.backendLabel.visible

    params.model = "brainmask-t1"
    assert backend.enabled and precision.enabled and backend.toolTip == process.BACKEND_TOOLTIP
    backend.currentIndex = backend.items.index("auto")
    assert params.backend == "auto"
