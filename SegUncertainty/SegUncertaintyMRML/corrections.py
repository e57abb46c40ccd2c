"""One-click corrections of a flagged region, undoable, and the review bookkeeping that saves with the scene.

Edits go through Slicer's segment editor logic (vtkSlicerSegmentEditorLogic), which saves the
segmentation's state for undo before every edit, as the Segment Editor's own effects do.
"""

from __future__ import annotations

import json

import numpy as np
import slicer

from . import segments, volumes

MODES = ("add", "remove")
REVIEW_ATTRIBUTE = "SegUncertainty.Review"
EDITOR_NODE_TAG = "SegUncertainty"  # the singleton tag of the module's one segment editor node


def editor_node(scene):
    """The scene's one SegUncertainty segment editor node (singleton-tagged, as Slicer's Segment Editor module
    keeps its own: Modules/Scripted/SegmentEditor/SegmentEditor.py, selectParameterNode); added if missing.
    Not saved with the scene: a loaded scene would otherwise merge its segmentation reference into the node
    behind the editor's back, and its undo history would not follow that segmentation."""
    node = scene.GetSingletonNode(EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(EDITOR_NODE_TAG)
        node.SetName("SegUncertainty editor")
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node = scene.AddNode(node)
    return node


def editor_logic(scene, segmentation_node, source_volume):
    """A segment editor logic on the scene's SegUncertainty editor node (``editor_node``), for
    ``segmentation_node``."""
    logic = slicer.vtkSlicerSegmentEditorLogic()
    app_logic = getattr(slicer, "app_logic", None) or slicer.app.applicationLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(editor_node(scene))
    logic.SetSegmentationNode(segmentation_node)
    logic.SetSourceVolumeNode(source_volume)
    return logic


class Corrections:
    """Add flagged voxels to, or remove them from, a segment; undo and redo.

    logic: a vtkSlicerSegmentEditorLogic bound to the segmentation (see ``editor_logic``).
    """

    def __init__(self, logic, segmentation_node, reference_volume):
        self.logic = logic
        self.segmentation_node = segmentation_node
        self.reference_volume = reference_volume

    def apply(self, segment_id: str, region_mask: np.ndarray, mode: str, save_state=None) -> int:
        """Set (``add``) or clear (``remove``) the voxels of ``region_mask`` ((k, j, i) bool on the
        reference grid) in the segment. Saves the state for undo first, through ``save_state`` when given
        (in Slicer: the embedded Segment Editor's saveStateForUndo, so that its Undo reverts the edit too),
        else in this logic's own history; returns the voxels changed."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        region = np.ascontiguousarray(region_mask, dtype=np.uint8)
        before = segments.segment_mask(self.segmentation_node, segment_id, self.reference_volume)
        changed = int(np.count_nonzero(region.view(bool) & (~before if mode == "add" else before)))
        if changed == 0:
            return 0
        self.logic.SetSegmentationNode(self.segmentation_node)
        if save_state is not None:
            save_state()
        else:
            self.logic.SaveStateForUndo()
        image = volumes.oriented_image(region, volumes.ijk_to_ras(self.reference_volume))
        edit = self.logic.ModificationModeAdd if mode == "add" else self.logic.ModificationModeRemove
        self.logic.ModifySegmentByLabelmap(self.segmentation_node, segment_id, image, edit, False, True)
        return changed

    def undo(self) -> None:
        self.logic.Undo()

    def redo(self) -> None:
        self.logic.Redo()


def save_review_state(segmentation_node, map_name: str, threshold: float, order: str, reviewed: set[int]) -> None:
    """Keep which regions were reviewed (for this map, threshold and order) on the node: saved with the scene."""
    state = {"map": map_name, "threshold": threshold, "order": order, "reviewed": sorted(int(r) for r in reviewed)}
    segmentation_node.SetAttribute(REVIEW_ATTRIBUTE, json.dumps(state))


def load_review_state(segmentation_node) -> dict | None:
    """The saved review state, or None (never saved, or unreadable)."""
    text = segmentation_node.GetAttribute(REVIEW_ATTRIBUTE)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
