"""Stand-ins for the Qt half of Slicer's Python: widgets built from the module's .ui, and the parameter node
wrapper with its GUI connectors. Written from Qt's documented signal behaviour and from Slicer's
Base/Python/slicer/parameterNodeWrapper/ (wrapper.py, guiConnectors.py, validators.py); see slicer_app_fakes
for what each reproduces. Only what the module uses is here; a widget method the module calls that has no
behaviour worth reproducing (setToolTip, setMRMLScene...) is recorded and does nothing.
"""

from __future__ import annotations

import contextlib
import typing
import xml.etree.ElementTree as ET

import slicer
import vtk


class Signal:
    """A Qt signal: connect / disconnect / emit, slots called in connection order."""

    def __init__(self):
        self._slots: list = []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot) -> None:
        self._slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            slot(*args)


class Widget:
    """A generic widget: Qt properties as attributes, the methods in NO_OPS recorded in ``calls`` and doing
    nothing. Any other attribute raises AttributeError, as PythonQt does for a name the Qt class lacks."""

    SIGNALS = ("clicked",)
    NO_OPS: tuple[str, ...] = ()

    def __init__(self, name: str, properties: dict | None = None):
        self.objectName, self.enabled, self.visible, self.text, self.toolTip = name, True, True, "", ""
        self._properties = dict(properties or {})
        self.calls: list[tuple] = []
        for signal in self.SIGNALS:
            setattr(self, signal, Signal())

    def property(self, name: str):
        return self._properties.get(name)

    def __getattr__(self, name: str):
        if name in type(self).NO_OPS:
            return lambda *args, **kwargs: self.calls.append((name, *args))
        raise AttributeError(f"'{type(self).__name__}' object ('{self.objectName}') has no attribute '{name}'")


class UiRoot(Widget):
    """The widget loadUI returns; setMRMLScene reaches the widgets the .ui's <connections> name as receivers
    of mrmlSceneChanged -> setMRMLScene (Qt makes those connections when the .ui is loaded)."""

    def __init__(self, children: dict, scene_receivers: list[str]):
        super().__init__("root")
        self._children, self._scene_receivers = children, scene_receivers

    def setMRMLScene(self, scene) -> None:
        for name in self._scene_receivers:
            receiver = self._children[name]
            if hasattr(receiver, "setMRMLScene"):
                receiver.setMRMLScene(scene)


class ProgressBar(Widget):
    SIGNALS = ()

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self.value = int(self._properties.get("value") or 0)


class PlainTextEdit(Widget):
    """QPlainTextEdit: its lines (appendPlainText, clear)."""

    SIGNALS = ()

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self.lines: list[str] = []

    def appendPlainText(self, text: str) -> None:
        self.lines.append(text)

    def clear(self) -> None:
        self.lines.clear()


class DirectoryButton(Widget):
    """ctkDirectoryButton: ``directory`` is QDir().path(), ".", until set (CTK's
    Libs/Widgets/ctkDirectoryButton.cpp keeps a default-constructed QDir)."""

    SIGNALS = ("directoryChanged",)

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self.directory = self._properties.get("directory") or "."


class SegmentEditorWidget(Widget):
    """qMRMLSegmentEditorWidget over a real vtkSlicerSegmentEditorLogic, as the widget is in Slicer 5.12
    (Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx): setMRMLSegmentEditorNode sets the
    logic's editor node (lines 1248-1272), setSegmentationNode sets it through that node and deactivates the
    effect (1319-1330), saveStateForUndo / undo / redo are the logic's (1993-1997, 2286-2298). So a
    segmentation set while the editor node is no longer in the scene resolves to nothing, and Undo then does
    nothing, as in Slicer. Effects and view observations are recorded only."""

    SIGNALS = ()
    NO_OPS = ("updateEffectList", "removeViewObservations", "installKeyboardShortcuts", "uninstallKeyboardShortcuts")

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self.Logic = slicer.vtkSlicerSegmentEditorLogic()
        self.Logic.SetMRMLApplicationLogic(getattr(slicer, "app_logic", None))
        self._editor_node, self._active_effect = None, None

    def setMRMLScene(self, scene) -> None:
        self.Logic.SetMRMLScene(scene)

    def setMRMLSegmentEditorNode(self, node) -> None:
        if node is not self._editor_node:
            self._editor_node = node
            self.Logic.SetSegmentEditorNode(node)

    def mrmlSegmentEditorNode(self):
        return self._editor_node

    def setSegmentationNode(self, node) -> None:
        if self.Logic.GetSegmentationNode() is node:
            return
        self.Logic.SetSegmentationNode(node)
        self.setActiveEffect(None)

    def segmentationNode(self):
        return self.Logic.GetSegmentationNode()

    def setSourceVolumeNode(self, node) -> None:
        self.Logic.SetSourceVolumeNode(node)

    def setActiveEffect(self, effect) -> None:
        self._active_effect = effect
        self.calls.append(("setActiveEffect", effect))

    def activeEffect(self):
        return self._active_effect

    def saveStateForUndo(self) -> None:
        self.Logic.SaveStateForUndo()

    def undo(self) -> None:
        self.Logic.Undo()

    def redo(self) -> None:
        self.Logic.Redo()


class QComboBox(Widget):
    """Items and a current index; clear() on a filled box emits currentIndexChanged(-1), the first item
    added becomes current and emits, setting an index emits only when it changes (QComboBox)."""

    SIGNALS = ("currentIndexChanged", "currentTextChanged")

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self.items: list[str] = []
        self._index = -1
        self.itemDataByRole: dict[tuple[int, int], object] = {}
        self.disabled: set[int] = set()

    @property
    def currentIndex(self) -> int:
        return self._index

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        index = index if 0 <= index < len(self.items) else -1
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentText(self) -> str:
        return self.items[self._index] if self._index >= 0 else ""

    def setCurrentText(self, text: str) -> None:
        if text in self.items:
            self.currentIndex = self.items.index(text)

    def findText(self, text: str) -> int:
        return self.items.index(text) if text in self.items else -1

    def setItemData(self, index: int, value, role: int) -> None:
        self.itemDataByRole[(index, role)] = value

    def itemData(self, index: int, role: int):
        return self.itemDataByRole.get((index, role))

    def model(self):
        """The combo box's QStandardItemModel: item(i).setEnabled(False) greys item i out (the user cannot
        pick it; setting the current index in code still can, as in Qt)."""
        combo = self

        class Item:
            def __init__(self, index):
                self.index = index

            def setEnabled(self, enabled: bool) -> None:
                (combo.disabled.discard if enabled else combo.disabled.add)(self.index)

        return type("QStandardItemModel", (), {"item": staticmethod(Item)})()

    def clear(self) -> None:
        self.items.clear()
        self.itemDataByRole.clear()
        self.disabled.clear()
        if self._index != -1:
            self._index = -1
            self.currentIndexChanged.emit(-1)
            self.currentTextChanged.emit("")

    def addItem(self, text: str) -> None:
        self.items.append(str(text))
        if self._index == -1:
            self.currentIndex = 0

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)


class ValueWidget(Widget):
    """QSpinBox / QDoubleSpinBox / ctkSliderWidget: a value clamped to [minimum, maximum]; valueChanged on a
    real change, also when a narrower range clamps it."""

    SIGNALS = ("valueChanged",)

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self._min = float(self._properties.get("minimum", 0.0))
        self._max = float(self._properties.get("maximum", 99.0))
        self._value = min(max(float(self._properties.get("value", self._min)), self._min), self._max)
        self.singleStep, self.decimals = float(self._properties.get("singleStep", 1.0)), 2

    def _set(self, value: float) -> None:
        value = min(max(float(value), self._min), self._max)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def _set_min(self, value: float) -> None:
        self._min = float(value)
        self._set(self._value)

    def _set_max(self, value: float) -> None:
        self._max = float(value)
        self._set(self._value)

    value = property(lambda self: self._value, _set)
    minimum = property(lambda self: self._min, _set_min)
    maximum = property(lambda self: self._max, _set_max)


class NodeComboBox(Widget):
    """qMRMLNodeComboBox: the current node; currentNodeChanged on a change. ``listedNodes()`` is what the list
    offers, filtered as qMRMLSortFilterProxyModel::filterAcceptsNode does for the properties used here
    (Libs/MRML/Widgets/qMRMLSortFilterProxyModel.cxx): a node of one of ``nodeTypes`` (exactly that class when
    showChildNodeTypes is false), not hidden from editors, not in ``sortFilterProxyModel().hiddenNodeIDs``."""

    SIGNALS = ("currentNodeChanged",)

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self._node, self._scene = None, None
        self._proxy = type("qMRMLSortFilterProxyModel", (), {"hiddenNodeIDs": []})()
        self.nodeTypes = list(self._properties.get("nodeTypes") or [])
        self.showChildNodeTypes = self._properties.get("showChildNodeTypes", True)

    def setMRMLScene(self, scene) -> None:
        self._scene = scene

    def sortFilterProxyModel(self):
        return self._proxy

    def listedNodes(self) -> list:
        listed = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            typed = any(node.GetClassName() == t if not self.showChildNodeTypes else node.IsA(t)
                        for t in self.nodeTypes)
            if typed and not node.GetHideFromEditors() and node.GetID() not in self._proxy.hiddenNodeIDs:
                listed.append(node)
        return listed

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class LineEdit(Widget):
    """QLineEdit: its text; returnPressed when the user presses Enter (a test emits it)."""

    SIGNALS = ("returnPressed",)


class CheckBox(Widget):
    """QCheckBox: ``checked`` as the .ui sets it; toggled on a real change."""

    SIGNALS = ("toggled",)

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self._checked = bool(self._properties.get("checked", False))

    def _set_checked(self, checked: bool) -> None:
        if bool(checked) != self._checked:
            self._checked = bool(checked)
            self.toggled.emit(self._checked)

    checked = property(lambda self: self._checked, _set_checked)


class TableItem:
    """A QStandardItem's tooltip."""

    def __init__(self):
        self._tooltip = ""

    def setToolTip(self, text: str) -> None:
        self._tooltip = text

    def toolTip(self) -> str:
        return self._tooltip


class TableView(Widget):
    """qMRMLTableView: qMRMLTableModel makes new items, so without tooltips, whenever the table node is
    modified (Libs/MRML/Widgets/qMRMLTableModel.cxx: onMRMLTableNodeModified -> updateModelFromMRML)."""

    SIGNALS = ()
    NO_OPS = ("setColumnHidden", "setMRMLScene")

    def __init__(self, name, properties=None):
        super().__init__(name, properties)
        self._node, self._items, self._built_at = None, {}, None

    def setMRMLTableNode(self, node) -> None:
        self.calls.append(("setMRMLTableNode", node))
        self._node = node

    def mrmlTableNode(self):
        return self._node

    def tableModel(self):
        view = self
        if self._node is not None and self._built_at != self._node.GetMTime():
            self._items, self._built_at = {}, self._node.GetMTime()

        class Model:
            def item(self, row: int, column: int):
                if view._node is None:
                    return None
                return view._items.setdefault((row, column), TableItem())

        return Model()


WIDGET_CLASSES = {"qMRMLTableView": TableView, "QProgressBar": ProgressBar, "QPlainTextEdit": PlainTextEdit,
                  "ctkDirectoryButton": DirectoryButton, "qMRMLSegmentEditorWidget": SegmentEditorWidget,
                  "QComboBox": QComboBox, "ctkComboBox": QComboBox,
                  "QSpinBox": ValueWidget,
                  "QDoubleSpinBox": ValueWidget, "ctkSliderWidget": ValueWidget, "qMRMLNodeComboBox": NodeComboBox,
                  "QLineEdit": LineEdit, "QCheckBox": CheckBox}


def _property_value(element):
    if element.find("stringlist") is not None:
        return [child.text or "" for child in element.find("stringlist").findall("string")]
    for tag, convert in (("string", str), ("double", float), ("number", float), ("bool", lambda t: t == "true")):
        child = element.find(tag)
        if child is not None:
            return convert(child.text or "")
    return None


def load_ui(path: str):
    """slicer.util.loadUI: here, the .ui's widgets (by name, in file order) as stand-in widgets."""
    widgets = {}
    tree = ET.parse(path)
    for element in tree.iter("widget"):
        properties = {p.get("name"): _property_value(p) for p in element.findall("property")}
        cls = WIDGET_CLASSES.get(element.get("class"), Widget)
        widgets[element.get("name")] = cls(element.get("name"), properties)
    receivers = [c.findtext("receiver") for c in tree.iter("connection")
                 if (c.findtext("slot") or "").startswith("setMRMLScene")]
    return UiRoot(widgets, receivers)


def child_widget_variables(root):
    ui = type("ChildWidgetVariables", (), {})()
    ui.__dict__.update(root._children)
    return ui


@contextlib.contextmanager
def try_with_error_display(message=None, show=True, waitCursor=False):
    """slicer.util.tryWithErrorDisplay: shows the error, then re-raises it (as Slicer's does)."""
    try:
        yield
    except Exception as exc:
        slicer.util.errorDisplay(f"{message}\n\n{exc}" if message else str(exc))
        raise


# -- parameterNodeWrapper ------------------------------------------------------------------------------
class Choice:
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"{value!r} is not one of {self.choices}")


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{value} is not within [{self.minimum}, {self.maximum}]")


def _split(hint):
    if typing.get_origin(hint) is typing.Annotated:
        base, *annotations = typing.get_args(hint)
        return base, annotations
    return hint, []


def _is_node(base) -> bool:
    return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)


class _ComboConnector:
    """QComboBoxToStringableConnector: clears and refills the box when created; currentIndexChanged."""

    def __init__(self, widget, choices):
        self.widget, self.choices, self._callback = widget, choices, None
        widget.clear()
        for choice in choices:
            widget.addItem(str(choice))

    def onChanged(self, callback):
        if self._callback:
            self.widget.currentIndexChanged.disconnect(self._changed)
        self._callback = callback
        if callback:
            self.widget.currentIndexChanged.connect(self._changed)

    def _changed(self, *args):
        self._callback()

    def read(self):
        return self.choices[self.widget.currentIndex]

    def write(self, value):
        self.widget.currentIndex = self.choices.index(value)


class _ValueConnector(_ComboConnector):
    """QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector / QSliderOrSpinBoxToIntConnector: sets the widget's
    range from WithinRange when created; valueChanged."""

    def __init__(self, widget, base, within):
        self.widget, self.base, self._callback = widget, base, None
        if within is not None:
            widget.minimum, widget.maximum = within.minimum, within.maximum

    def onChanged(self, callback):
        if self._callback:
            self.widget.valueChanged.disconnect(self._changed)
        self._callback = callback
        if callback:
            self.widget.valueChanged.connect(self._changed)

    def read(self):
        return self.base(self.widget.value)

    def write(self, value):
        self.widget.value = value


class _NodeConnector(_ComboConnector):
    def __init__(self, widget):
        self.widget, self._callback = widget, None

    def onChanged(self, callback):
        if self._callback:
            self.widget.currentNodeChanged.disconnect(self._changed)
        self._callback = callback
        if callback:
            self.widget.currentNodeChanged.connect(self._changed)

    def read(self):
        return self.widget.currentNode()

    def write(self, value):
        self.widget.setCurrentNode(value)


def parameterNodeWrapper(cls):
    """Typed properties over a real vtkMRMLScriptedModuleNode (values as strings, nodes as references)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    parameters = {name: (*_split(hint), getattr(cls, name, None)) for name, hint in hints.items()}

    def read(self, name):
        base, _, default = parameters[name]
        node = self.parameterNode
        if _is_node(base):
            return node.GetNodeReference(name)
        if not node.HasParameter(name):
            return default
        return base(node.GetParameter(name))

    def write(self, name, value):
        base, annotations, _ = parameters[name]
        for annotation in annotations:
            annotation.validate(value)
        with slicer.util.NodeModify(self.parameterNode):
            if _is_node(base):
                self.parameterNode.SetParameter(name, "")
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                self.parameterNode.SetParameter(name, str(base(value)))

    def __init__(self, node):
        self.parameterNode = node
        self._parameterGUIs, self._guiVtkObserverTags, self._nextTag = {}, {}, 0
        self._updatingGUIFromParameterNode = False
        for name, (base, _, default) in parameters.items():
            if not _is_node(base) and not node.HasParameter(name):
                write(self, name, default)

    def make_connector(name, widget):
        base, annotations, _ = parameters[name]
        choice = next((a for a in annotations if isinstance(a, Choice)), None)
        within = next((a for a in annotations if isinstance(a, WithinRange)), None)
        if isinstance(widget, QComboBox):
            return _ComboConnector(widget, choice.choices)
        if isinstance(widget, NodeComboBox):
            return _NodeConnector(widget)
        return _ValueConnector(widget, base, within)

    def update_gui(self):
        if self._updatingGUIFromParameterNode:
            return
        try:
            self._updatingGUIFromParameterNode = True
            with slicer.util.NodeModify(self.parameterNode):
                for mapping in self._parameterGUIs.values():
                    for name, connector in mapping.items():
                        connector.write(read(self, name))
        finally:
            self._updatingGUIFromParameterNode = False

    def connectGui(self, gui):
        mapping = {w.property("SlicerParameterName"): w for w in gui.__dict__.values()
                   if isinstance(w, Widget) and w.property("SlicerParameterName")}
        connectors = {name: make_connector(name, widget) for name, widget in mapping.items()}
        tag, self._nextTag = self._nextTag, self._nextTag + 1
        self._parameterGUIs[tag] = connectors
        for name, connector in connectors.items():
            connector.write(read(self, name))

            def callback(name=name, connector=connector):
                with slicer.util.NodeModify(self.parameterNode):
                    if not self._updatingGUIFromParameterNode:
                        write(self, name, connector.read())

            connector.onChanged(callback)
        self._guiVtkObserverTags[tag] = self.parameterNode.AddObserver(
            vtk.vtkCommand.ModifiedEvent, lambda caller, event: update_gui(self))
        return tag

    def disconnectGui(self, tag):
        for connector in self._parameterGUIs.pop(tag, {}).values():
            connector.onChanged(None)
        if tag in self._guiVtkObserverTags:
            self.parameterNode.RemoveObserver(self._guiVtkObserverTags.pop(tag))

    namespace = {name: property(lambda self, name=name: read(self, name),
                                lambda self, value, name=name: write(self, name, value)) for name in parameters}
    namespace.update(
        __init__=__init__, __doc__=cls.__doc__, connectGui=connectGui, disconnectGui=disconnectGui,
        allParameters=parameters,
        StartModify=lambda self: self.parameterNode.StartModify(),
        EndModify=lambda self, was: self.parameterNode.EndModify(was),
        AddObserver=lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback,
                                                                                              priority),
        RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
        Modified=lambda self: self.parameterNode.Modified(),
    )
    return type(cls.__name__, (), namespace)


def parameter_node_wrapper_module() -> dict:
    return {"parameterNodeWrapper": parameterNodeWrapper, "Choice": Choice, "WithinRange": WithinRange}
