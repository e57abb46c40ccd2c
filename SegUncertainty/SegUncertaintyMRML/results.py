"""Import the outputs of ``seguncertainty segment`` (through its manifest.json) into the scene.

All nodes of a run are new nodes, grouped in a subject hierarchy folder under the input volume's study,
so a new run never overwrites an earlier (possibly user-edited) result. An import that fails removes
what it added and raises, leaving the scene as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from . import overlays, scores_table, segments, volumes

RUN_ATTRIBUTE = "SegUncertainty.Run"  # on every node of a run: the run's name
ROLE_ATTRIBUTE = "SegUncertainty.Role"  # segmentation / map:<name> / probability:<label> / scores
MAP_ORDER = ("entropy", "mutual_information", "variance", "expected_entropy")


class ResultsError(RuntimeError):
    """The output folder is not a complete, readable SegUncertainty result for this input."""


@dataclass
class RunNodes:
    """The nodes of one run. maps: uncertainty volumes by map name; probabilities: by label name."""

    name: str
    segmentation: object
    maps: dict = field(default_factory=dict)
    probabilities: dict = field(default_factory=dict)
    scores: object = None
    folder_item: int = 0
    manifest: dict = field(default_factory=dict)

    def all_nodes(self) -> list:
        return [self.segmentation, *self.maps.values(), *self.probabilities.values(), self.scores]


def read_manifest(out_dir: str | Path) -> dict:
    """The run's manifest.json; ResultsError when missing (incomplete run) or unreadable."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise ResultsError(f"No manifest.json in {out_dir}: the run did not finish")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"Unreadable manifest {path}: {exc}") from exc


def terminology_entry(codes: dict) -> str:
    """Slicer's serialized terminology entry for a model card's codes: {"category": [scheme, value, meaning],
    "type": [scheme, value, meaning]} (optional "modifier"), in Slicer's general anatomy context."""
    def triple(key: str) -> tuple[str, str, str]:
        scheme, value, meaning = codes.get(key) or ("", "", "")
        return value, scheme, meaning

    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        "Segmentation category and type - 3D Slicer General Anatomy list", *triple("category"), *triple("type"),
        *triple("modifier"), "Anatomic codes - DICOM master list", "", "", "", "", "", "")


def import_segmentation(scene, labelmap_path: Path, labels: dict, input_volume, name: str,
                        terminology: dict | None = None):
    """A segmentation node with one segment per non-zero label, on the input volume's geometry.

    terminology: optional codes per label value (see terminology_entry), with an optional display "color".
    """
    labelmap = volumes.read_volume(scene, labelmap_path, "__seguncertainty_labels__", "vtkMRMLLabelMapVolumeNode")
    try:
        if not volumes.same_grid(labelmap, input_volume):
            raise ResultsError(f"{labelmap_path.name} is not on the grid of '{input_volume.GetName()}'")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
        segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), input_volume.GetID())
        values = slicer.util.arrayFromVolume(labelmap)
        for value, label in sorted(((int(k), v) for k, v in labels.items() if int(k) != 0)):
            segment_id = segmentation.GetSegmentation().AddEmptySegment(label, label)
            # the label value first: in a shared labelmap it says which voxels are the segment's
            segmentation.GetSegmentation().GetSegment(segment_id).SetLabelValue(value)
            segments.set_segment_mask(segmentation, segment_id, values == value, input_volume)
            codes = (terminology or {}).get(str(value))
            if codes:
                segment = segmentation.GetSegmentation().GetSegment(segment_id)
                segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_entry(codes))
                if codes.get("color"):
                    segment.SetColor(*codes["color"])
        return segmentation
    finally:
        volumes.remove_node(scene, labelmap)


def place_in_study(scene, nodes, input_volume, folder_name: str) -> int:
    """Put ``nodes`` in a new subject hierarchy folder beside the input volume (under its study)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    input_item = hierarchy.GetItemByDataNode(input_volume)
    parent = hierarchy.GetItemParent(input_item) if input_item else hierarchy.GetSceneItemID()
    folder = hierarchy.CreateFolderItem(parent, folder_name)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
        else:  # Slicer's subject hierarchy plugins add items for new nodes; bare scenes need this
            hierarchy.CreateItem(folder, node)
    return folder


def unique_run_name(scene, base: str) -> str:
    """``base``, or ``base (2)``, ``base (3)``... so that runs never share names."""
    taken = {n.GetAttribute(RUN_ATTRIBUTE) for n in slicer.util.getNodesByClass("vtkMRMLNode", scene)}
    name, k = base, 2
    while name in taken:
        name, k = f"{base} ({k})", k + 1
    return name


def import_results(scene, out_dir: str | Path, input_volume, colormap: str = "Inferno") -> RunNodes:
    """Load a finished run's segmentation, maps, probabilities and scores as new nodes; see module doc."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    run = unique_run_name(scene, f"{input_volume.GetName()} {manifest.get('method', 'run')}")
    added = []
    try:
        entries = manifest["outputs"]
        by_kind = {}
        for entry in entries:
            by_kind.setdefault(entry["kind"], []).append(entry)
        if "labelmap" not in by_kind:
            raise ResultsError(f"{out_dir}: the manifest lists no segmentation")
        seg_entry = by_kind["labelmap"][0]
        segmentation = import_segmentation(scene, out_dir / seg_entry["file"], seg_entry["labels"], input_volume,
                                           f"{run} segmentation", seg_entry.get("terminology"))
        added.append(segmentation)
        nodes = RunNodes(run, segmentation, manifest=manifest)
        map_entries = sorted(by_kind.get("uncertainty", []),
                             key=lambda e: MAP_ORDER.index(e["map"]) if e["map"] in MAP_ORDER else 99)
        for entry in map_entries:
            node = volumes.read_volume(scene, out_dir / entry["file"], f"{run} {entry['map']}")
            added.append(node)
            _check_grid(node, input_volume, entry["file"])
            overlays.style_map(node, colormap)
            overlays.add_color_legend(node, entry["map"].replace("_", " "))
            node.SetAttribute(ROLE_ATTRIBUTE, f"map:{entry['map']}")
            node.SetAttribute("SegUncertainty.Meaning", entry.get("meaning", ""))
            nodes.maps[entry["map"]] = node
        for entry in by_kind.get("probability", []):
            node = volumes.read_volume(scene, out_dir / entry["file"], f"{run} probability {entry['label']}")
            added.append(node)
            _check_grid(node, input_volume, entry["file"])
            node.SetAttribute(ROLE_ATTRIBUTE, f"probability:{entry['label']}")
            nodes.probabilities[entry["label"]] = node
        for entry in by_kind.get("scores", []):
            scores = json.loads((out_dir / entry["file"]).read_text())
            nodes.scores = scores_table.add_scores_table(scene, scores, f"{run} scores")
            added.append(nodes.scores)
        if nodes.scores is None:
            raise ResultsError(f"{out_dir}: the manifest lists no scores")
        segmentation.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
        nodes.scores.SetAttribute(ROLE_ATTRIBUTE, "scores")
        for node in nodes.all_nodes():
            node.SetAttribute(RUN_ATTRIBUTE, run)
        nodes.folder_item = place_in_study(scene, nodes.all_nodes(), input_volume, f"SegUncertainty: {run}")
        return nodes
    except (ResultsError, OSError, KeyError, ValueError) as exc:
        for node in added:
            volumes.remove_node(scene, node)
        if isinstance(exc, ResultsError):
            raise
        raise ResultsError(f"Could not import results from {out_dir}: {exc}") from exc


def _check_grid(node, input_volume, file_name: str) -> None:
    if not volumes.same_grid(node, input_volume):
        raise ResultsError(f"{file_name} is not on the grid of '{input_volume.GetName()}'")


def find_runs(scene) -> dict[str, dict]:
    """Runs present in the scene (also after a scene reload): {run name: {role: node}}."""
    runs: dict[str, dict] = {}
    for node in slicer.util.getNodesByClass("vtkMRMLNode", scene):
        run, role = node.GetAttribute(RUN_ATTRIBUTE), node.GetAttribute(ROLE_ATTRIBUTE)
        if run and role:
            runs.setdefault(run, {})[role] = node
    return runs


def run_from_roles(name: str, roles: dict) -> RunNodes:
    """Rebuild a RunNodes from the {role: node} dict of ``find_runs`` (after a scene reload)."""
    return RunNodes(
        name=name, segmentation=roles["segmentation"], scores=roles.get("scores"),
        maps={role[4:]: node for role, node in roles.items() if role.startswith("map:")},
        probabilities={role[12:]: node for role, node in roles.items() if role.startswith("probability:")},
    )
