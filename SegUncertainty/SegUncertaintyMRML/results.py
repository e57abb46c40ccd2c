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

from SegUncertaintyLib.core.manifest import MANIFEST, ManifestError
from SegUncertaintyLib.core.manifest import read_manifest as read_run_manifest

from . import overlays, scores_table, segments, volumes

RUN_ATTRIBUTE = "SegUncertainty.Run"  # on every node of a run: the run's name
ROLE_ATTRIBUTE = "SegUncertainty.Role"  # segmentation / map:<name> / probability:<label> / scores
MANIFEST_ATTRIBUTE = "SegUncertainty.Manifest"  # on the run's segmentation: its manifest.json (saved with the scene)
REFERRAL_ATTRIBUTE = "SegUncertainty.Referral"  # on the scores table: scores.json's "referral" (calibrated runs)
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
    referral: dict | None = None  # scores.json's calibrated "referral" entry (calibration/apply.py); None without

    def all_nodes(self) -> list:
        return [self.segmentation, *self.maps.values(), *self.probabilities.values(), self.scores]


def read_manifest(out_dir: str | Path) -> dict:
    """The run's manifest.json (read and checked by the library); ResultsError when missing (incomplete
    run), unreadable or malformed."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ResultsError(f"No manifest.json in {out_dir}: the run did not finish")
    try:
        return read_run_manifest(out_dir)
    except ManifestError as exc:
        problem = "Unreadable" if isinstance(exc.__cause__, (OSError, ValueError)) else "Malformed"
        raise ResultsError(f"{problem} manifest {path}: {exc}") from exc


def member_path(out_dir: Path, entry: dict) -> Path:
    """The file an output entry names, confined to the run folder: a relative path without '..' that is not
    a symbolic link (nor under one) and names an existing file; ResultsError otherwise."""
    name = entry.get("file")
    if not isinstance(name, str) or not name:
        raise ResultsError(f"Malformed manifest: an output of kind '{entry.get('kind')}' names no file")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ResultsError(f"Refused manifest path '{name}': it points outside the run folder")
    path = out_dir / relative
    for part in [path, *path.parents]:
        if part == out_dir:
            break
        if part.is_symlink():
            raise ResultsError(f"Refused manifest path '{name}': it is a symbolic link")
    if not path.is_file():
        raise ResultsError(f"The manifest lists {name}, which is not a file in {out_dir}")
    return path


def _check_labels(labels, file_name: str) -> dict[int, str]:
    """{label value 1-255: segment name} from a labelmap entry's labels; ResultsError naming the problem."""
    if not isinstance(labels, dict) or not labels:
        raise ResultsError(f"Malformed manifest: the labels of {file_name} must be an object {{value: name}}")
    checked = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise ResultsError(f"Malformed manifest: label value '{key}' of {file_name} is not an integer") from None
        if not 0 <= value <= 255 or not isinstance(name, str) or not name.strip():
            raise ResultsError(f"Malformed manifest: label {key!r}: {name!r} of {file_name} needs a value 0-255 "
                               "and a name")
        if value:
            checked[value] = name
    if not checked:
        raise ResultsError(f"Malformed manifest: {file_name} lists no structure label")
    return checked


def _check_terminology(terminology, file_name: str) -> dict:
    """Per label value: codes {"category"/"type"/"modifier": [scheme, value, meaning]} and an optional color."""
    if terminology is None:
        return {}
    problem = None
    if not isinstance(terminology, dict):
        problem = "must be an object"
    else:
        for key, codes in terminology.items():
            if not isinstance(codes, dict):
                problem = f"entry {key!r} must be an object"
            elif any(not (isinstance(codes.get(k), list) and len(codes[k]) == 3
                          and all(isinstance(c, str) for c in codes[k]))
                     for k in ("category", "type", "modifier") if codes.get(k) is not None):
                problem = f"entry {key!r}: codes must be [scheme, value, meaning] strings"
            elif codes.get("color") is not None and not (
                    isinstance(codes["color"], list) and len(codes["color"]) == 3
                    and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1
                            for c in codes["color"])):
                problem = f"entry {key!r}: color must be three numbers 0-1"
            if problem:
                break
    if problem:
        raise ResultsError(f"Malformed terminology of {file_name}: {problem}")
    return terminology


def _read_scores(path: Path) -> dict:
    """scores.json, checked to make a table (see scores_table.score_rows); ResultsError otherwise."""
    try:
        scores = json.loads(path.read_text())
        if not isinstance(scores, dict) or not isinstance(scores.get("classes"), dict) or not all(
                isinstance(v, dict) for v in scores["classes"].values()):
            raise ValueError("'classes' must map each structure to its scores")
        scores_table.score_rows(scores)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ResultsError(f"Malformed scores file {path.name}: {exc}") from exc
    return scores


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

    labels: {value: name} (or a manifest's {"value": name}); terminology: optional codes per label value
    (see terminology_entry), with an optional display "color".
    """
    labels = _check_labels(labels, labelmap_path.name)
    terminology = _check_terminology(terminology, labelmap_path.name)
    labelmap = volumes.read_volume(scene, labelmap_path, "__seguncertainty_labels__", "vtkMRMLLabelMapVolumeNode")
    try:
        if not volumes.same_grid(labelmap, input_volume):
            raise ResultsError(f"{labelmap_path.name} is not on the grid of '{input_volume.GetName()}'")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
        segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), input_volume.GetID())
        values = slicer.util.arrayFromVolume(labelmap)
        for value, label in sorted(labels.items()):
            segment_id = segmentation.GetSegmentation().AddEmptySegment(label, label)
            # the label value first: in a shared labelmap it says which voxels are the segment's
            segmentation.GetSegmentation().GetSegment(segment_id).SetLabelValue(value)
            segments.set_segment_mask(segmentation, segment_id, values == value, input_volume)
            codes = terminology.get(str(value))
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


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def import_results(scene, out_dir: str | Path, input_volume, colormap: str = "Inferno") -> RunNodes:
    """Load a finished run's segmentation, maps, probabilities and scores as new nodes; see module doc.

    Transactional: the manifest, its paths (confined to ``out_dir``), labels, terminology and scores are
    checked before any node is added, and if anything fails later every node added since the start is
    removed, so the scene is left exactly as it was. Any failure is a ResultsError with one clear message.
    """
    out_dir = Path(out_dir).absolute()
    manifest = read_manifest(out_dir)
    by_kind: dict[str, list[dict]] = {}
    for entry in manifest["outputs"]:
        by_kind.setdefault(entry["kind"], []).append(entry)
    if "labelmap" not in by_kind:
        raise ResultsError(f"{out_dir}: the manifest lists no segmentation")
    if "scores" not in by_kind:
        raise ResultsError(f"{out_dir}: the manifest lists no scores")
    for kind, key in (("uncertainty", "map"), ("probability", "label")):
        for entry in by_kind.get(kind, []):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ResultsError(f"Malformed manifest: an output of kind '{kind}' has no '{key}' name")
    paths = {id(entry): member_path(out_dir, entry) for entries in by_kind.values() for entry in entries
             if entry["kind"] in ("labelmap", "uncertainty", "probability", "scores")}
    seg_entry = by_kind["labelmap"][0]
    _check_labels(seg_entry.get("labels"), seg_entry["file"])
    _check_terminology(seg_entry.get("terminology"), seg_entry["file"])
    all_scores = [_read_scores(paths[id(entry)]) for entry in by_kind["scores"]]

    method = manifest.get("method")
    run = unique_run_name(scene, f"{input_volume.GetName()} {method if isinstance(method, str) else 'run'}")
    before = set(_node_ids(scene))
    try:
        segmentation = import_segmentation(scene, paths[id(seg_entry)], seg_entry["labels"], input_volume,
                                           f"{run} segmentation", seg_entry.get("terminology"))
        nodes = RunNodes(run, segmentation, manifest=manifest)
        map_entries = sorted(by_kind.get("uncertainty", []),
                             key=lambda e: MAP_ORDER.index(e["map"]) if e["map"] in MAP_ORDER else 99)
        for entry in map_entries:
            node = volumes.read_volume(scene, paths[id(entry)], f"{run} {entry['map']}")
            _check_grid(node, input_volume, entry["file"])
            overlays.style_map(node, colormap)
            overlays.add_color_legend(node, entry["map"].replace("_", " "))
            node.SetAttribute(ROLE_ATTRIBUTE, f"map:{entry['map']}")
            node.SetAttribute("SegUncertainty.Meaning", str(entry.get("meaning", "")))
            nodes.maps[entry["map"]] = node
        for entry in by_kind.get("probability", []):
            node = volumes.read_volume(scene, paths[id(entry)], f"{run} probability {entry['label']}")
            _check_grid(node, input_volume, entry["file"])
            node.SetAttribute(ROLE_ATTRIBUTE, f"probability:{entry['label']}")
            nodes.probabilities[entry["label"]] = node
        nodes.scores = scores_table.add_scores_table(scene, all_scores[-1], f"{run} scores")
        nodes.referral = all_scores[-1].get("referral")
        if nodes.referral is not None:
            nodes.scores.SetAttribute(REFERRAL_ATTRIBUTE, json.dumps(nodes.referral))
        segmentation.SetAttribute(MANIFEST_ATTRIBUTE, json.dumps(manifest))
        segmentation.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
        nodes.scores.SetAttribute(ROLE_ATTRIBUTE, "scores")
        for node in nodes.all_nodes():
            node.SetAttribute(RUN_ATTRIBUTE, run)
        nodes.folder_item = place_in_study(scene, nodes.all_nodes(), input_volume, f"SegUncertainty: {run}")
        return nodes
    except Exception as exc:  # roll back whatever was added, then one message
        _remove_added(scene, before)
        if isinstance(exc, ResultsError):
            raise
        raise ResultsError(f"Could not import results from {out_dir}: {exc}") from exc


def _remove_added(scene, before: set[str]) -> None:
    """Remove every node whose ID was not in ``before`` (data nodes with their display and storage nodes)."""
    for node_id in reversed(_node_ids(scene)):
        if node_id not in before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                volumes.remove_node(scene, node)


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


def _json_attribute(node, name: str):
    """A node's attribute holding JSON, decoded; None when absent or unreadable."""
    text = node.GetAttribute(name) if node is not None else None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def run_from_roles(name: str, roles: dict) -> RunNodes:
    """Rebuild a RunNodes from the {role: node} dict of ``find_runs`` (after a scene reload)."""
    return RunNodes(
        name=name, segmentation=roles["segmentation"], scores=roles.get("scores"),
        maps={role[4:]: node for role, node in roles.items() if role.startswith("map:")},
        probabilities={role[12:]: node for role, node in roles.items() if role.startswith("probability:")},
        manifest=_json_attribute(roles["segmentation"], MANIFEST_ATTRIBUTE) or {},
        referral=_json_attribute(roles.get("scores"), REFERRAL_ATTRIBUTE),
    )
