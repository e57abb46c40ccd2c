"""The thin stand-ins for what only Slicer's application has, so SegUncertainty.py runs under slicer-core.

Each stand-in is written from Slicer's source (github.com/Slicer/Slicer, main and v5.12) and reproduces the
behaviour the module depends on, including the behaviour that caused earlier bugs:

- ``launch_console_process`` is ``slicer.util.launchConsoleProcess(blocking=False)``
  (Base/Python/slicer/util.py, ``_startAsyncProcessHandling``): a background thread reads the process's
  output into a queue, and the callbacks run on the *main thread* only, when the Qt event loop runs the
  100 ms ``QTimer.singleShot`` poll. Here the event loop is ``process_events()``; nothing is called until a
  test runs it, exactly as nothing is called in Slicer until the user's click handler has returned.
- ``write_launcher`` writes a stand-in for Slicer's ``PythonSlicer`` (a CTK application launcher): a real
  process that starts the real interpreter as its *child* with the same arguments, forwards no signal
  (SIGTERM kills the launcher and leaves the child running, holding the output pipe open) and exits with
  the child's exit code.
- ``slicer.ScriptedLoadableModule``: base classes without Qt; ``getParameterNode`` finds or adds the
  module's singleton vtkMRMLScriptedModuleNode as Slicer's does; the widget's ``onReload`` executes the
  module's file again as ``slicer.util.reloadScriptedModule`` does (Base/Python/slicer/util.py).
- ``slicer.parameterNodeWrapper`` (slicer_qt_fakes): a wrapper whose properties read and write the real
  parameter node (so every change fires its ModifiedEvent), validators, and ``connectGui`` that, like
  wrapper.py's ``_connectParametersToGui``, creates the connectors (a QComboBox connector *clears and
  refills* the combo box), writes each parameter to its widget, connects the widget's signal, and adds a
  ModifiedEvent observer on the node (so, like the real one, it runs in the order observers were added).
- ``slicer.util.loadUI`` / ``childWidgetVariables``: stand-in Qt widgets built from the .ui file
  (slicer_qt_fakes), with Qt's signal semantics (a signal fires only on a real change; clearing a combo box
  fires currentIndexChanged(-1); a value outside a slider's range is clamped).
- ``qt``: only ``Qt.ToolTipRole`` (Qt's value, 3) and ``QFileDialog.getExistingDirectory`` /
  ``getOpenFileName``, which return ``file_dialog_answer`` (a test sets it; "" is Cancel, as Qt returns;
  PythonQt's getOpenFileName returns the path alone, not PyQt's (path, filter) tuple).
- ``slicer.i18n`` (translation returns the text) and ``slicer.app`` (temporaryPath, defaultScenePath, version
  5.13, testingEnabled).
- the module widget's C++ parent (``ModuleWidgetParent``): ``isEntered`` only between ``enter_module`` and
  ``exit_module``, as qSlicerAbstractModuleWidget sets it; ``slicer.qSlicerSegmentEditorEffectFactory``: the
  effectRegistered(QString) signal, by PythonQt's signature-string connect.
- the event loop stops polling a process whose line callback raised, as Slicer's checkOutput does.

The MRML scene, the logics, the nodes and the processes are real.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from pathlib import Path

import slicer


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class ScriptedLoadableModuleLogic:
    """Slicer's base logic: the module's parameter node is the scene's singleton scripted module node."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        return slicer.mrmlScene.AddNode(node)


class ModuleWidgetParent:
    """The C++ qSlicerScriptedLoadableModuleWidget behind a Python module widget: ``isEntered`` is True only
    between entering and leaving the module, set before the Python enter() and cleared before its exit()
    (Base/QTGUI/qSlicerAbstractModuleWidget.cxx lines 54-67, qSlicerScriptedLoadableModuleWidget.cxx 216-229).
    Tests switch modules with ``enter_module`` / ``exit_module``."""

    def __init__(self):
        self.isEntered = False


def enter_module(widget) -> None:
    """The user selects the module (Slicer: qSlicerScriptedLoadableModuleWidget::enter)."""
    widget.parent.isEntered = True
    widget.enter()


def exit_module(widget) -> None:
    """The user switches to another module (Slicer: qSlicerScriptedLoadableModuleWidget::exit)."""
    widget.parent.isEntered = False
    widget.exit()


class _Base:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else ModuleWidgetParent()


class ScriptedLoadableModuleWidget(_Base):
    def resourcePath(self, filename: str) -> str:
        return str(Path(__file__).resolve().parents[2] / "SegUncertainty" / "Resources" / filename)

    def setup(self) -> None:
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def onReload(self) -> None:
        """slicer.util.reloadScriptedModule's reload of the source: the module's file executed again as a new
        module of the same name in sys.modules (Slicer then replaces the panel; not reproduced here)."""
        name = type(self).__name__.removesuffix("Widget")
        spec = importlib.util.spec_from_file_location(name, Path(self.resourcePath("")).parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


class ScriptedLoadableModuleTest(_Base):
    """unittest.TestCase's assertions and Slicer's delayDisplay (logged here)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.messages: list[str] = []

    def delayDisplay(self, message, msec=None):
        self.messages.append(message)

    def assertTrue(self, value, msg=None):
        assert value, msg

    def assertGreater(self, a, b, msg=None):
        assert a > b, msg or f"{a} <= {b}"

    def assertEqual(self, a, b, msg=None):
        assert a == b, msg or f"{a} != {b}"

    def assertIsNone(self, a, msg=None):
        assert a is None, msg or f"{a} is not None"


# -- launchConsoleProcess(blocking=False) and the main thread's event loop ----------------------------------
_pending: list[tuple[subprocess.Popen, queue.Queue, object, object]] = []
CHECK_INTERVAL_S = 0.1  # Slicer's CHECK_INTERVAL_MS


def launch_console_process(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None, blocking=True,
                           logCallback=None, completedCallback=None):
    """Slicer's non-blocking launchConsoleProcess: a reader thread fills a queue; ``process_events`` (the
    main thread's QTimer poll) delivers the lines to logCallback and then completedCallback(returnCode)."""
    env = dict(os.environ, **(updateEnvironment or {}))
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    if blocking:
        return proc
    output: queue.Queue = queue.Queue()

    def read_output() -> None:
        for line in proc.stdout:
            output.put(("line", line.rstrip()))
        proc.wait()
        output.put(("done", proc.returncode))

    threading.Thread(target=read_output, daemon=True).start()
    _pending.append((proc, output, logCallback, completedCallback))
    return proc


def process_events() -> None:
    """One pass of the main thread's event loop: every due poll delivers what its queue holds. A callback that
    raises ends its process's polling for good (Slicer's checkOutput reschedules itself only after the
    callbacks returned, and catches nothing: Base/Python/slicer/util.py, v5.12.0, lines 4177-4208); the
    exception reaches the event loop (here: the caller)."""
    for entry in list(_pending):
        proc, output, on_line, on_done = entry
        while True:
            try:
                kind, data = output.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                if on_line:
                    try:
                        on_line(data)
                    except Exception:
                        _pending.remove(entry)
                        raise
            else:
                _pending.remove(entry)
                if on_done:
                    on_done(data)
                break


def run_event_loop(until=None, timeout: float = 300.0) -> None:
    """Run the event loop (polls every 100 ms) until ``until()`` is true, or until no process is pending."""
    deadline = time.monotonic() + timeout
    while (until is None and _pending) or (until is not None and not until()):
        if time.monotonic() > deadline:
            raise TimeoutError("the event loop ran out of time")
        process_events()
        time.sleep(CHECK_INTERVAL_S)


def wait_for_processes(timeout: float = 300.0) -> None:
    """Run the event loop until every launched process has finished and its callbacks have run."""
    run_event_loop(timeout=timeout)


def write_launcher(folder: Path) -> Path:
    """A ``PythonSlicer`` launcher in ``folder``: runs this interpreter as a child, forwards no signal."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "PythonSlicer"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent('''\
        """Stand-in for Slicer's PythonSlicer launcher: the interpreter runs as a child process; no signal
        handler, so SIGTERM ends this launcher at once and the child goes on."""
        import subprocess
        import sys

        sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))
        '''))
    path.chmod(0o755)
    return path


class EffectFactory:
    """qSlicerSegmentEditorEffectFactory.instance(): PythonQt's connect/disconnect by signal signature;
    ``register`` emits effectRegistered(QString) as registerEffect does."""

    def __init__(self):
        self.slots: dict[str, list] = {}

    def connect(self, signal: str, slot) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def disconnect(self, signal: str, slot) -> bool:
        """False, nothing else, when the slot is not connected (QObject::disconnect)."""
        slots = self.slots.get(signal, [])
        if slot not in slots:
            return False
        slots.remove(slot)
        return True

    def register(self, name: str) -> None:
        for slot in list(self.slots.get("effectRegistered(QString)", [])):
            slot(name)


effect_factory = EffectFactory()


# -- messages shown to the user -----------------------------------------------------------------------------
file_dialog_answer: list[str] = [""]  # what the next QFileDialog returns ("" = the user cancelled)
shown_messages: list[tuple[str, str]] = []  # (kind, text) of errorDisplay / infoDisplay / warningDisplay


def install() -> None:
    """Register the stand-ins in sys.modules (idempotent)."""
    if "slicer.ScriptedLoadableModule" in sys.modules:
        return
    from Testing.support import slicer_qt_fakes

    _module("qt", Qt=types.SimpleNamespace(ToolTipRole=3),
            QFileDialog=types.SimpleNamespace(getExistingDirectory=lambda parent=None, caption="", directory="":
                                              file_dialog_answer[0],
                                              getOpenFileName=lambda parent=None, caption="", directory="", filter="":
                                              file_dialog_answer[0]))
    _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    _module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=_Base,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic)
    _module("slicer.parameterNodeWrapper", **slicer_qt_fakes.parameter_node_wrapper_module())
    slicer.app = types.SimpleNamespace(temporaryPath=tempfile.gettempdir(), majorVersion=5, minorVersion=13,
                                       defaultScenePath=str(Path(tempfile.gettempdir()) / "SlicerScenes"),
                                       testingEnabled=lambda: True, processEvents=process_events)
    slicer.qSlicerSegmentEditorEffectFactory = types.SimpleNamespace(instance=lambda: effect_factory)
    slicer.util.launchConsoleProcess = launch_console_process
    slicer.util.loadUI = slicer_qt_fakes.load_ui
    slicer.util.childWidgetVariables = slicer_qt_fakes.child_widget_variables
    for kind in ("errorDisplay", "infoDisplay", "warningDisplay"):
        setattr(slicer.util, kind, lambda text, *a, _kind=kind, **k: shown_messages.append((_kind, text)))
    slicer.util.tryWithErrorDisplay = slicer_qt_fakes.try_with_error_display
