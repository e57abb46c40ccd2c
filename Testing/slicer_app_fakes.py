"""The thin stand-ins for what only Slicer's application has, so SegUncertainty.py imports under slicer-core.

Faked, and nothing else: ``slicer.i18n`` (translation returns the text), ``slicer.ScriptedLoadableModule``
(base classes without Qt; the logic's parameter node is a real vtkMRMLScriptedModuleNode),
``slicer.parameterNodeWrapper`` (the decorator leaves the class as a plain holder of its defaults; the
Choice / WithinRange annotations are accepted and ignored), ``slicer.app.temporaryPath`` and
``slicer.util.launchConsoleProcess(blocking=False)``, whose Slicer version polls the process with a QTimer:
here a thread reads the real process's output and calls the same callbacks (``wait_for_processes`` joins
it). The logic then runs on the real MRML scene from slicer_headless.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import types

import slicer


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class _Annotation:
    def __init__(self, *args, **kwargs):
        self.args = args


def _parameter_node_wrapper(cls):
    """Instances hold the class's annotated defaults (None for nodes), over a real parameter node."""
    defaults = {name: getattr(cls, name, None) for name in getattr(cls, "__annotations__", {})}

    def __init__(self, node=None):
        self.__dict__.update(defaults)
        self.parameterNode = node

    return type(cls.__name__, (), {"__init__": __init__, "__doc__": cls.__doc__})


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self._node = None

    def getParameterNode(self):
        if self._node is None or self._node.GetScene() is None:
            self._node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SegUncertainty")
        return self._node


class _Base:
    def __init__(self, parent=None):
        self.parent = parent


_threads: list[threading.Thread] = []


def launch_console_process(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None, blocking=True,
                           logCallback=None, completedCallback=None):
    """The non-blocking launchConsoleProcess: output lines to logCallback, then completedCallback(code)."""
    env = dict(os.environ, **(updateEnvironment or {}))
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def pump() -> None:
        for line in proc.stdout:
            logCallback(line.rstrip())
        completedCallback(proc.wait())

    thread = threading.Thread(target=pump, daemon=True)
    _threads.append(thread)
    thread.start()
    return proc


def wait_for_processes(timeout: float = 300.0) -> None:
    """Wait until every launched process has finished and its callbacks have run."""
    while _threads:
        _threads.pop().join(timeout)


def install() -> None:
    """Register the stand-ins in sys.modules (idempotent)."""
    if "slicer.ScriptedLoadableModule" in sys.modules:
        return
    _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    _module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=_Base, ScriptedLoadableModuleWidget=_Base,
            ScriptedLoadableModuleTest=_Base, ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic)
    _module("slicer.parameterNodeWrapper", parameterNodeWrapper=_parameter_node_wrapper, Choice=_Annotation,
            WithinRange=_Annotation)
    slicer.app = types.SimpleNamespace(temporaryPath=tempfile.gettempdir())
    slicer.util.launchConsoleProcess = launch_console_process
