"""The thin stand-ins for what only Slicer's application has, so SegUncertainty.py imports under slicer-core.

Faked, and nothing else: ``slicer.i18n`` (translation returns the text), ``slicer.ScriptedLoadableModule``
(base classes without Qt; the logic's parameter node is a real vtkMRMLScriptedModuleNode),
``slicer.parameterNodeWrapper`` (the decorator leaves the class as a plain holder of its defaults; the
Choice / WithinRange annotations are accepted and ignored) and ``slicer.app.temporaryPath``. The logic
then runs on the real MRML scene from slicer_headless.
"""

from __future__ import annotations

import sys
import tempfile
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
