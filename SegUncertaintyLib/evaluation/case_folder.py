"""A case folder from ``seguncertainty segment`` (or another tool's plain volumes): its manifest, its files,
its reference and its scores, read from untrusted files with one clear error each.

The reference for case ``NAME`` is ``REFS/NAME.<ext>`` (a labelmap with the model's label values; a folder
``REFS/NAME/`` holds one labelmap per annotator), else one named after the case's input (``input_stem``: a
cohort's case folders carry hashed ids, the references the scans' names), when no other case of the folder
has an input of that name.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputImageError, UsageError
from ..core.files import read_json_object, safe_stems
from ..core.manifest import MANIFEST, ManifestError, is_plain_name, parse_manifest
from ..core.vocabulary import MAP_NAMES
from ..inference.scores import SUBJECT_SCORES
from ..io.header import describe_grid, read_header, same_grid
from ..io.images import IMAGE_SUFFIXES, image_suffix, read_volume


def readable(name: str) -> str:
    """A file or argument name as text for reports: names the system decoded with surrogate escapes
    (non-ASCII under an ASCII locale) are read as UTF-8, undecodable bytes replaced. Paths keep the raw name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def method_names(folders: list[Path]) -> list[str]:
    """One distinct report name per prediction folder: its base name, or as many trailing path parts as
    it takes to tell folders apart (``a/mc`` and ``b/mc`` -> "a/mc", "b/mc"). The same folder given twice
    is a usage error: its results would be counted twice."""
    resolved = [Path(os.path.abspath(f)) for f in folders]
    if len(set(resolved)) != len(resolved):
        raise UsageError("evaluate: the same prediction folder is given twice")
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        names = [readable("/".join(p.parts[-depth:]).lstrip("/")) for p in resolved]
        if len(set(names)) == len(names):
            return names
    raise AssertionError("distinct absolute paths always differ in some trailing part")


def read_array(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """The (z, y, x) voxels and the image of an untrusted volume file."""
    image = read_volume(path)  # header (geometry, memory) checked before the voxels are read
    return sitk.GetArrayFromImage(image), image


def check_case_grids(case_dir: Path, files: dict[str, Path], seg_image: sitk.Image, reference_path: Path,
                     ref_image: sitk.Image, mask_path: Path | None) -> None:
    """Geometry guard: the reference, the region mask and every image of the case must be on the grid of
    the case's segmentation (size, spacing, origin and direction; io.header.same_grid). Another grid is
    refused with both grids in the message, never scored as if aligned. Only headers are read here."""
    others = [(f"Reference {reference_path}", ref_image)]
    if mask_path is not None:
        others.append((f"Region mask {mask_path}", read_header(mask_path)))
    others += [(f"{path.name} of case '{case_dir.name}'", read_header(path))
               for key, path in files.items() if key != "labelmap" and image_suffix(path) in IMAGE_SUFFIXES]
    for what, grid in others:
        if not same_grid(grid, seg_image):
            raise InputImageError(f"{what} is not on the grid of case '{case_dir.name}': {describe_grid(grid)}; "
                                  f"the case's segmentation has {describe_grid(seg_image)}. Resample it onto the "
                                  "case's grid first (nearest neighbour for labelmaps)")


def find_reference(refs: Path, case: str, what: str = "reference segmentation", annotators: bool = True) -> Path:
    """``REFS/<case>.<ext>``, or (``annotators``) the folder ``REFS/<case>/`` holding one labelmap per
    annotator; InputImageError naming ``what`` when there is neither."""
    if annotators and (refs / case).is_dir():
        return refs / case
    for suffix in IMAGE_SUFFIXES:
        if (refs / f"{case}{suffix}").is_file():
            return refs / f"{case}{suffix}"
    raise InputImageError(f"No {what} for case '{case}' in {refs} ({case}.nii.gz, .nrrd, ...)")


def input_stem(case_dir: Path) -> str | None:
    """The file name, without its image suffix, of the input the case's manifest.json names (a DICOM
    series: its folder's name); None without a manifest or an input."""
    path = case_dir / MANIFEST
    try:
        given = read_json(path, "case manifest").get("input") if path.is_file() else None
    except InputImageError:
        return None
    if not isinstance(given, str) or not Path(given).name:
        return None
    name = Path(given).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def reference_names(cases: list[Path]) -> dict[Path, list[str]]:
    """Per case folder, the names its reference may have, in order: the folder's name, then its input's
    (``input_stem``) where that differs and no other case has an input of the same name."""
    stems = {case: input_stem(case) for case in cases}
    counts: dict[str, int] = {}
    for stem in stems.values():
        if stem is not None:
            counts[stem] = counts.get(stem, 0) + 1
    return {case: [case.name, *([stem] if stem not in (None, case.name) and counts[stem] == 1 else [])]
            for case, stem in stems.items()}


def find_reference_named(refs: Path, names: list[str], what: str = "reference segmentation",
                         annotators: bool = True) -> Path:
    """``find_reference`` for the first of ``names`` that has one; InputImageError naming them all."""
    for name in names:
        try:
            return find_reference(refs, name, what, annotators)
        except InputImageError:
            continue
    raise InputImageError(f"No {what} for case '{names[0]}' in {refs} (" +
                          " or ".join(f"{n}.nii.gz" for n in names) + ", .nrrd, ...)")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from an untrusted file; InputImageError naming ``what`` and the problem otherwise."""
    return read_json_object(path, what, InputImageError)


def check_case_manifest(manifest: dict, path: Path) -> dict:
    """The fields evaluate reads from a case manifest, checked: ``labels`` {"<int>": name}, ``outputs`` a
    list of {"file": plain file name, "kind": text}, one of kind "labelmap". InputImageError otherwise."""
    def bad(problem: str) -> InputImageError:
        return InputImageError(f"Case manifest {path}: {problem}")

    try:
        parse_manifest(manifest)
    except ManifestError as exc:
        raise bad(str(exc)) from None
    labels, outputs = manifest.get("labels"), manifest.get("outputs")
    if not isinstance(labels, dict) or not labels:
        raise bad("field 'labels' must map label values to names")
    for value, name in labels.items():
        if not (isinstance(value, str) and value.strip().lstrip("-").isdigit() and isinstance(name, str) and name):
            raise bad(f"field 'labels' has the entry {value!r}: {name!r}; expected \"<integer>\": \"<name>\"")
    for entry in outputs:
        file, kind = entry.get("file"), entry.get("kind")
        if not is_plain_name(file):
            raise bad(f"output {entry!r} needs 'file' (a file name inside the case folder) and 'kind'")
        if kind == "samples" and not isinstance(entry.get("label"), str):
            raise bad(f"output {file} of kind 'samples' needs 'label'")
    if not any(e["kind"] == "labelmap" for e in outputs):
        raise bad("no output of kind 'labelmap' (the segmentation)")
    return manifest


PLAIN_FOLDER_MAPS = MAP_NAMES  # the maps a plain folder may hold


def plain_manifest(case_dir: Path, labels: dict[int, str] | None = None) -> dict:
    """A manifest for a folder of plain volumes from another tool (no manifest.json).

    Expects ``segmentation.<ext>`` (a labelmap) and optionally ``probability_<label name>.<ext>`` (the name
    as it is, or as a safe file name: core.files.safe_stems),
    ``entropy`` / ``mutual_information`` / ``variance`` / ``expected_entropy.<ext>`` and ``scores.json``
    (any of .nii.gz, .nii, .nrrd, .mha). ``labels`` maps label values to names; by default the values
    found in the segmentation, named ``label<value>``.
    """
    images = {p.name[: -len(image_suffix(p))]: p.name for p in sorted(case_dir.iterdir())
              if image_suffix(p) in IMAGE_SUFFIXES}
    if "segmentation" not in images:
        raise InputImageError(f"{case_dir} has neither manifest.json nor segmentation.<ext>")
    if labels is None:
        values = np.unique(read_array(case_dir / images["segmentation"])[0])
        labels = {int(v): f"label{int(v)}" for v in values if v != 0}
    outputs = [{"file": images["segmentation"], "kind": "labelmap"}]
    stems = safe_stems(labels.values())  # as write_outputs names them; the name itself is accepted too
    for name in labels.values():
        found = next((images[f"probability_{s}"] for s in (name, stems[name]) if f"probability_{s}" in images), None)
        if found is not None:
            outputs.append({"file": found, "kind": "probability", "label": name})
    outputs += [{"file": images[m], "kind": "uncertainty", "map": m} for m in PLAIN_FOLDER_MAPS if m in images]
    if (case_dir / "scores.json").is_file():
        outputs.append({"file": "scores.json", "kind": "scores"})
    return {"labels": {"0": "background", **{str(k): v for k, v in labels.items()}}, "outputs": outputs}


def case_manifest(case_dir: Path, labels: dict[int, str] | None = None) -> dict:
    """The case's manifest.json (from ``segment``), or one built from its plain volumes."""
    path = case_dir / MANIFEST
    if path.is_file():
        return check_case_manifest(read_json(path, "case manifest"), path)
    return plain_manifest(case_dir, labels)


def file_key(entry: dict) -> str:
    if entry["kind"] == "samples":
        return f"samples:{entry['label']}"
    return entry.get("map") or entry.get("label") or entry["kind"]


def read_annotations(reference_path: Path) -> tuple[list[np.ndarray], sitk.Image]:
    """One labelmap, or every labelmap in a folder (one per annotator, same grid); returns arrays and geometry."""
    paths = sorted(p for p in reference_path.iterdir() if image_suffix(p) in IMAGE_SUFFIXES) \
        if reference_path.is_dir() else [reference_path]
    if not paths:
        raise InputImageError(f"No annotator labelmaps in {reference_path}")
    arrays, image = [], None
    for path in paths:
        array, image_i = read_array(path)
        if image is not None and not same_grid(image_i, image):
            raise InputImageError(f"Annotation {path} is not on the grid of {paths[0]}: {describe_grid(image_i)} "
                                  f"vs {describe_grid(image)}")
        arrays.append(array)
        image = image or image_i
    return arrays, image


def read_samples(path: Path, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The per-sample masks of a ``samples_<label>.npz`` (segment --save-samples); InputImageError if the
    file is unreadable or its bits do not fit ``shape`` (z, y, x) and its sample count."""
    try:
        with np.load(path, allow_pickle=False) as data:
            bits, n = np.asarray(data["bits"]), int(data["n_samples"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise InputImageError(f"Cannot read the saved samples {path}: {exc}") from exc
    if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8, *shape) or n < 1:
        raise InputImageError(f"Saved samples {path}: bits {bits.shape} {bits.dtype} do not hold {n} sample(s) "
                              f"on the case's grid {shape}")
    return [((bits[t // 8] >> (t % 8)) & 1).astype(bool) for t in range(n)]


def _numbers(values: list, count: int) -> bool:
    """``count`` numbers (not booleans)."""
    return len(values) == count and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def score_classes(path: Path) -> dict[str, dict]:
    """The per-class subject scores of a scores.json ({class: {score: value}}); InputImageError if malformed."""
    classes = read_json(path, "scores file").get("classes")
    if not isinstance(classes, dict) or not all(isinstance(v, dict) for v in classes.values()):
        raise InputImageError(f"Scores file {path}: field 'classes' must map class names to their scores")
    for name, values in classes.items():
        for score in SUBJECT_SCORES:
            value = values.get(score)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InputImageError(f"Scores file {path}: '{name}'.'{score}' must be a number or null, "
                                      f"got {value!r}")
        predicted = values.get("predicted_dice")
        if predicted is not None and not (isinstance(predicted, dict) and _numbers(
                [predicted.get("value"), *(predicted.get("interval") or [])], 3)):
            raise InputImageError(f"Scores file {path}: '{name}'.'predicted_dice' must hold a numeric 'value' and "
                                  f"'interval' [low, high], got {predicted!r}")
    return classes


def ood_case_scores(case_dir: Path, labels: dict[int, str] | None = None) -> dict[str, dict]:
    """An OOD case's subject scores per class from its scores.json (no reference needed); {} if it has none."""
    manifest = case_manifest(case_dir, labels)
    entry = next((e for e in manifest["outputs"] if e["kind"] == "scores"), None)
    return score_classes(case_dir / entry["file"]) if entry else {}


def case_folders(folder: Path) -> list[Path]:
    """The case sub-folders of one method's folder (with manifest.json or segmentation.<ext>)."""
    return sorted({p.parent for pattern in ("*/manifest.json", "*/segmentation.*") for p in folder.glob(pattern)})


def read_ood_list(path: Path, folders: list[Path]) -> set[str]:
    """The case names of an --ood file (one per line, blank lines ignored). InputImageError (exit 3) when it
    cannot be read, as for any input file; UsageError (exit 2) when it names a case found in none of the
    prediction ``folders`` (a typo would otherwise silently pool an OOD case with the others)."""
    try:
        names = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    except FileNotFoundError:
        raise InputImageError(f"--ood file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputImageError(f"Cannot read --ood file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    known = {readable(case.name) for folder in folders for case in case_folders(folder)}
    unknown = sorted(names - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UsageError(f"--ood file {path} names {len(unknown)} case(s) found in no prediction folder: {shown}")
    return names
