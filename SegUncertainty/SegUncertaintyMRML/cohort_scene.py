"""A cohort's worklist in the scene: the cases of ``seguncertainty cohort``'s worklist.csv in review-priority
order, each case's input volume and results loaded only when the reviewer steps to it, and "reviewed"
written back to the file (SegUncertaintyLib.cohort.review, torch-free, under its lock).

Keeping the scene small without losing work: when another case is loaded, the cases loaded before are
removed from the scene (their input volume, every node of their run and their subject hierarchy folders),
except a case that holds the reviewer's work (its segmentation changed: a segment edited, added or
deleted, flagged regions marked reviewed; or another segmentation made on its input volume): it stays in
the scene, listed in ``CohortWorklist.kept``, and is found again, with its edits, when the reviewer steps
back to it. Stepping back to a case still in the scene reuses its nodes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import slicer
from vtk.util import numpy_support

from SegUncertaintyLib.cohort.review import WorklistError, case_folder, mark_reviewed, open_worklist
from SegUncertaintyLib.core.files import series_sha256, sha256_file

from . import corrections, results, volumes

CASE_ATTRIBUTE = "SegUncertainty.CohortCase"  # on a loaded case's input volume: the case id
INPUT_SEARCH_UP = 2  # a relative input is also looked for this many folders above the worklist's


class CohortError(RuntimeError):
    """The worklist or a case cannot be opened or loaded; one line that names the problem."""


@dataclass
class CaseNodes:
    """One case in the scene: its input volume, its run (results.RunNodes) and its subject hierarchy folder.
    fingerprint: the segmentation's content when loaded (``fingerprint``), to tell whether it was edited."""

    case: str
    volume: object
    run: results.RunNodes
    folder_item: int
    fingerprint: str

    def in_scene(self) -> bool:
        return self.volume.GetScene() is not None and self.run.segmentation.GetScene() is not None


def fingerprint(segmentation_node) -> str:
    """sha256 of a segmentation's segments (ids, names, label values and the voxels of their binary labelmaps,
    read in place: no temporary node) and of its regions' review marks: changes with any edit the reviewer
    could lose."""
    digest = hashlib.sha256()
    segmentation = segmentation_node.GetSegmentation()
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        digest.update(f"{segmentation.GetNthSegmentID(index)}\0{segment.GetName()}\0{segment.GetLabelValue()}\0"
                      .encode())
        image = segment.GetRepresentation(labelmap)
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if scalars is not None:
            digest.update(str(image.GetExtent()).encode())
            digest.update(numpy_support.vtk_to_numpy(scalars).tobytes())
    digest.update((segmentation_node.GetAttribute(corrections.REVIEW_ATTRIBUTE) or "").encode())
    return digest.hexdigest()


def remove_with_item(scene, hierarchy, node) -> None:
    """Remove a node (with its display and storage nodes) and its subject hierarchy item, as Slicer's subject
    hierarchy plugin logic does when a node is removed (a bare MRML scene has no such plugin)."""
    if node is None or node.GetScene() is None:
        return
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.RemoveItem(item, False, False)
    volumes.remove_node(scene, node)


def _rank(row: dict) -> int:
    return int(row["rank"])


class CohortWorklist:
    """The rows of one worklist.csv in rank order (rank 1 = review first), a current case, and the cases
    loaded into the scene. Opening checks the file (open_worklist: a worklist, unique cases, outputs
    confined to its folder) and touches no scene; CohortError otherwise."""

    def __init__(self, path: str | Path):
        self.path, self.rows = self._read(path)
        self.index = 0
        self.loaded: dict[str, CaseNodes] = {}
        self.kept: list[str] = []  # cases kept in the scene at the last load because they were edited

    @staticmethod
    def _read(path) -> tuple[Path, list[dict]]:
        try:
            path, rows = open_worklist(path)
        except WorklistError as exc:
            raise CohortError(str(exc)) from None
        if not rows:
            raise CohortError(f"{path} lists no case")
        return path, sorted(rows, key=_rank)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def current(self) -> dict:
        return self.rows[self.index]

    def reload(self) -> None:
        """Read the file again (marks written by others show); the current case stays current."""
        case = self.current["case"]
        self.path, self.rows = self._read(self.path)
        self.index = next((i for i, row in enumerate(self.rows) if row["case"] == case),
                          min(self.index, len(self.rows) - 1))

    def step(self, direction: int, skip: bool = False) -> bool:
        """Make the next (+1) or previous (-1) case current, passing over reviewed and failed cases when
        ``skip``; False, and nothing changes, when there is none."""
        index = self.index + direction
        while 0 <= index < len(self.rows):
            row = self.rows[index]
            if not (skip and (row["reviewed"] or row["status"] == "failed")):
                self.index = index
                return True
            index += direction
        return False

    # -- the scene -------------------------------------------------------------------------------------
    def load_case(self, scene) -> CaseNodes | None:
        """Load the current case (input volume and results) unless it is in the scene already, then remove
        the other loaded cases that were not edited (see the module doc). A failed case loads nothing and
        returns None (its error is in ``describe()``). CohortError when the case cannot be loaded: the scene
        is then as it was."""
        row = self.current
        nodes = None
        if row["status"] != "failed":
            nodes = self.loaded.get(row["case"])
            if nodes is not None and not nodes.in_scene():  # the scene was closed, or a node deleted
                self.unload(scene, row["case"])
                nodes = None
            if nodes is None:
                nodes = self.loaded[row["case"]] = self._load(scene, row)
        self.kept = []
        for case, other in list(self.loaded.items()):
            if other is nodes:
                continue
            if other.in_scene() and self.edited(other):
                self.kept.append(case)
            else:
                self.unload(scene, case)
        return nodes

    def edited(self, nodes: CaseNodes) -> bool:
        """Whether a loaded case holds the reviewer's work: its segmentation changed since it was loaded, or
        another segmentation (a new run, one made by hand) was made on its input volume."""
        if fingerprint(nodes.run.segmentation) != nodes.fingerprint:
            return True
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        return any(other.GetNodeReference(role) is nodes.volume
                   and other.GetAttribute(results.RUN_ATTRIBUTE) != nodes.run.name
                   for other in slicer.util.getNodesByClass("vtkMRMLSegmentationNode", nodes.volume.GetScene()))

    def unload(self, scene, case: str) -> None:
        """Remove a loaded case from the scene: its input volume, its run's nodes (also those added later
        for it, e.g. the flagged voxels) and its folders when nothing else was put in them."""
        nodes = self.loaded.pop(case)
        run_nodes = [n for n in slicer.util.getNodesByClass("vtkMRMLNode", scene)
                     if n.GetAttribute(results.RUN_ATTRIBUTE) == nodes.run.name]
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for node in [nodes.volume, *nodes.run.all_nodes(), *run_nodes]:
            remove_with_item(scene, hierarchy, node)
        for item in (nodes.run.folder_item, nodes.folder_item):
            if item and hierarchy.GetItemName(item) and not hierarchy.GetNumberOfItemChildren(item):
                hierarchy.RemoveItem(item, False, False)

    def unload_all(self, scene) -> list[str]:
        """Remove every loaded case that was not edited; returns the cases kept."""
        for case, nodes in list(self.loaded.items()):
            if not (nodes.in_scene() and self.edited(nodes)):
                self.unload(scene, case)
        return list(self.loaded)

    def find_input(self, row: dict, manifest: dict) -> tuple[Path, list[str]]:
        """The case's input and, for a DICOM series, its files (sorted; [] for an image file). Where the cohort
        read it (the manifest's ``input_resolved``), else as its manifest names it: an absolute path, or one
        relative to the folder the cohort ran in, looked for from the worklist's folder, its parent and
        grandparent (``seguncertainty cohort scans/ --out review/`` writes scans/...), then the current
        folder. A folder is a DICOM case: the files of the series the manifest names (``dicom_series``) under
        it, sub-folders too. When the manifest records the input's sha256 (a cohort run does), the input must
        have it: the image or series the case was segmented from, not one changed or replaced since (for a
        series the worker's digest: each file's path relative to the folder and its sha256, in path order,
        so a slice changed, added or removed tells). CohortError when none is found."""
        given = manifest.get("input") or row["input"]
        if not isinstance(given, str) or not given:
            raise CohortError(f"Case '{row['case']}': its manifest names no input")
        path = Path(given)
        settings = manifest.get("settings")
        settings = settings if isinstance(settings, dict) else {}
        resolved = settings.get("input_resolved")
        bases = [self.folder, *list(self.folder.parents)[:INPUT_SEARCH_UP], Path.cwd()]
        candidates = [path] if path.is_absolute() else [b / path for b in bases]
        if isinstance(resolved, str) and os.path.isabs(resolved):
            candidates.insert(0, Path(resolved))  # where the cohort read it (same machine, not moved)
        existing = [p for p in dict.fromkeys(candidates) if p.exists()]
        if not existing:
            raise CohortError(f"Case '{row['case']}': its input {given} is not there (moved, or another machine?)")
        expected = settings.get("input_sha256")
        expected = expected if isinstance(expected, str) else None
        if existing[0].is_dir():
            return self._find_series(row, settings.get("dicom_series"), existing, expected)
        if expected is None:
            return existing[0], []
        found = next((p for p in existing if p.is_file() and sha256_file(p) == expected), None)
        if found is None:
            raise CohortError(f"Case '{row['case']}': its input {existing[0]} is not the image the case was "
                              "segmented from (its sha256 differs: changed or replaced since the run)")
        return found, []

    @staticmethod
    def _find_series(row: dict, uid, folders: list[Path], expected: str | None) -> tuple[Path, list[str]]:
        """The first of ``folders`` holding DICOM series ``uid`` (with the ``expected`` digest, if given)."""
        case = row["case"]
        if not isinstance(uid, str) or not uid:
            raise CohortError(f"Case '{case}': its input {folders[0]} is a folder but its manifest names no "
                              "DICOM series (dicom_series)")
        holding = []  # the folders that hold the series, with another digest
        for folder in (f for f in folders if f.is_dir()):
            try:
                files = volumes.dicom_series_files(folder, uid)
            except OSError as exc:
                raise CohortError(f"Case '{case}': {exc}") from None
            if files and (expected is None or series_sha256(folder, files) == expected):
                return folder, files
            if files:
                holding.append(folder)
        if not holding:
            raise CohortError(f"Case '{case}': its input folder {folders[0]} holds no DICOM series {uid} "
                              "(moved, or another machine?)")
        raise CohortError(f"Case '{case}': the DICOM series {uid} in {holding[0]} is not the series the case was "
                          "segmented from (its sha256 differs: a slice changed, added or removed since the run)")

    def _load(self, scene, row: dict) -> CaseNodes:
        case = row["case"]
        try:
            out_dir = case_folder(self.folder, row)  # checked when read; checked again before use
            manifest = results.read_manifest(out_dir)
        except (WorklistError, results.ResultsError) as exc:
            raise CohortError(f"Case '{case}': {exc}") from None
        input_path, series = self.find_input(row, manifest)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        volume, folder = None, 0
        try:
            volume = (volumes.read_dicom_series(scene, series, case) if series
                      else volumes.read_volume(scene, input_path, case))
            volume.SetAttribute(CASE_ATTRIBUTE, case)
            folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), f"Cohort case {row['rank']}: {case}")
            item = hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(folder, volume)
            hierarchy.SetItemParent(item, folder)
            run = results.import_results(scene, out_dir, volume)  # transactional: adds all or nothing
        except Exception as exc:  # the scene back as it was, then one message
            remove_with_item(scene, hierarchy, volume)
            if folder:
                hierarchy.RemoveItem(folder, False, False)
            raise CohortError(f"Case '{case}': {exc}") from None
        return CaseNodes(case, volume, run, folder, fingerprint(run.segmentation))

    # -- the file --------------------------------------------------------------------------------------
    def mark_reviewed(self, reviewed: bool = True, note: str = "") -> dict:
        """Write the current case's mark to the worklist (review.mark_reviewed) and read the file again."""
        try:
            mark_reviewed(self.path, self.current["case"], reviewed, note)
        except (WorklistError, OSError) as exc:
            raise CohortError(f"Could not mark case '{self.current['case']}': {exc}") from None
        self.reload()
        return self.current

    def describe(self) -> str:
        """The current case for the panel: position, rank, case, status, priority, reason, reviewed."""
        row = self.current
        lines = [f"Case {self.index + 1} of {len(self.rows)} (rank {row['rank']}): {row['case']}, {row['status']}"
                 + (f", priority {row['priority']}" if row["priority"] else "")]
        if row["status"] == "failed":
            lines.append(f"Failed: {row['error'] or 'no error recorded'}")
        elif row["reason"]:
            lines.append(f"Why: {row['reason']}")
        reviewed = f"reviewed {row['reviewed_at']}".strip() if row["reviewed"] else "not reviewed"
        lines.append(reviewed[0].upper() + reviewed[1:] + (f": {row['reviewer_note']}" if row["reviewer_note"] else ""))
        return "\n".join(lines)

    def progress(self) -> str:
        done = sum(1 for row in self.rows if row["reviewed"])
        failed = sum(1 for row in self.rows if row["status"] == "failed")
        return f"{done} of {len(self.rows)} cases reviewed" + (f"; {failed} failed" if failed else "")
