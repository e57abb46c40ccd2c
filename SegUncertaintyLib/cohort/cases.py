"""The cases a cohort's inputs name, each with a unique, stable id (also its output folder's name).

An INPUT is an image file (NIfTI, NRRD, MHA: ``io.images.IMAGE_SUFFIXES``), a folder, or a CSV file:

- a folder is searched recursively (symbolic links to folders not followed) for image files and for
  DICOM series (``io.dicom.find_series``): one case per image file and per series (by SeriesInstanceUID,
  its files may span sub-folders). A truncated or corrupt DICOM file fails the case of the series in
  its folder when run (that series may lack a slice), or a case of its own where no series was read
  there; the other cases go on. Folders holding a run of this tool (a ``manifest.json`` it wrote, or
  a cohort's ``cohort.json``) are left out, so an output folder inside an input folder is not an input;
- a CSV (``.csv``) has a ``path`` column (file or DICOM folder; relative to the CSV's folder) and an
  optional ``case`` column naming the case. A path the CSV names that does not exist is still a case (it
  fails alone when run); a path given on the command line that does not exist is refused.

Case ids: the ``case`` value from a CSV when given (a safe file name: ``SAFE_NAME``, not a name the
cohort folder uses itself), else ``<input name>-<first 8 hex of sha256(resolved path)>`` (for a DICOM
series ``<its folder name>-<hash of resolved folder and series UID>``): the same inputs give the same
ids on every run, in any order, and two ``t1.nii.gz`` in different folders never collide. One path
named twice (two inputs, a symbolic link) is one case. Cases come sorted by id.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputImageError, UsageError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a case id: one portable file name
COHORT_MANIFEST = "cohort.json"
RESERVED = frozenset({"worklist.csv", "worklist.html", COHORT_MANIFEST})  # the cohort folder's own files


@dataclass(frozen=True)
class Case:
    """One volume to segment: an image file (``series`` None) or one DICOM series under ``path``."""

    id: str
    path: str  # absolute, resolved: what is read
    given: str  # the input as the user wrote it (the worklist's ``input`` column)
    series: str | None = None  # SeriesInstanceUID of a DICOM case
    files: tuple[str, ...] = field(default=(), repr=False)  # a DICOM case's files (its input hash)
    named: bool = False  # the id is a CSV's ``case`` value (else generated from the path)

    @property
    def key(self) -> tuple[str, str | None]:
        return self.path, self.series


def _short_hash(text: str) -> str:
    return hashlib.sha256(os.fsencode(text)).hexdigest()[:8]


def _safe_stem(name: str) -> str:
    from ..io.images import image_suffix

    suffix = image_suffix(name)
    stem = name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:60] or "case"
    return stem if stem[0].isalnum() else f"case{stem}"


def check_case_name(name: str, where: str) -> str:
    """``name`` if it is a safe case id, else UsageError naming ``where`` it came from."""
    if not SAFE_NAME.fullmatch(name) or name.lower() in RESERVED:
        raise UsageError(f"Unsafe case name {name!r} in {where}: use 1-100 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit (not {', '.join(sorted(RESERVED))})")
    return name


def series_case_id(folder: str, uid: str) -> str:
    """The case id of DICOM series ``uid`` whose files lie in ``folder`` (a real path): its name and a hash."""
    return f"{_safe_stem(Path(folder).name)}-{_short_hash(folder + chr(0) + uid)}"


def file_case(path: Path, given: str, name: str | None = None) -> Case:
    resolved = str(path.resolve())
    return Case(name or f"{_safe_stem(path.name)}-{_short_hash(resolved)}", resolved, given, named=name is not None)


def _is_run_folder(folder: Path, filenames: list[str]) -> bool:
    from ..results.run_folder import MANIFEST, run_files

    return COHORT_MANIFEST in filenames or (MANIFEST in filenames and run_files(folder) is not None)


def folder_cases(folder: Path, given: str) -> list[Case]:
    """Image files and DICOM series under ``folder`` (recursively), one case each."""
    from ..io.dicom import find_series
    from ..io.header import quiet_itk
    from ..io.images import IMAGE_SUFFIXES
    from ..io.publish import PREFIX

    cases, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if _is_run_folder(here, filenames):
            dirnames.clear()
            skipped.append(os.path.join(os.path.realpath(dirpath), ""))
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(PREFIX))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_SUFFIXES):
                cases.append(file_case(here / name, str(Path(given) / here.relative_to(folder) / name)))
    broken: list[str] = []  # unreadable DICOM files: the cases of their folders fail when run, alone
    with quiet_itk():
        series_found = find_series(folder, broken)
    covered = set()
    for series in series_found:
        files = sorted(os.path.realpath(f) for f in series.files)
        if any(f.startswith(s) for f in files for s in skipped):
            continue
        covered.update(os.path.dirname(f) for f in files)
        common = os.path.commonpath([os.path.dirname(f) for f in files])
        rel = os.path.relpath(common, os.path.realpath(folder))
        cases.append(Case(series_case_id(common, series.uid), common,
                          str(Path(given) / rel) if rel != "." else given, series.uid, tuple(files)))
    for where in sorted({os.path.dirname(os.path.realpath(f)) for f in broken} - covered):  # no series read there
        if not any(os.path.join(where, "").startswith(s) for s in skipped):
            rel = os.path.relpath(where, os.path.realpath(folder))
            files = tuple(sorted(os.path.realpath(f) for f in broken if os.path.dirname(os.path.realpath(f)) == where))
            cases.append(Case(f"{_safe_stem(Path(where).name)}-{_short_hash(where)}", where,
                              str(Path(given) / rel) if rel != "." else given, None, files))
    return cases


def csv_cases(path: Path, given: str) -> list[Case]:
    """The cases a CSV lists (``path`` column, optional ``case`` column); UsageError on a bad CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"Cannot read CSV {given}: {exc}") from exc
    if "path" not in columns:
        raise UsageError(f"CSV {given} has no 'path' column (columns: {', '.join(columns) or 'none'})")
    cases, names = [], set()
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise UsageError(f"CSV {given} line {line}: empty path")
        target = Path(row["path"]) if os.path.isabs(row["path"]) else path.parent / row["path"]
        name = row.get("case") or None
        if name is not None:
            check_case_name(name, f"CSV {given} line {line}")
            if name in names:
                raise UsageError(f"CSV {given} line {line}: duplicate case name {name!r}")
            names.add(name)
        if target.is_dir():
            found = folder_cases(target, row["path"])
            if name is not None and len(found) != 1:
                raise UsageError(f"CSV {given} line {line}: case {name!r} names a folder holding {len(found)} "
                                 "volumes; a named case must be one file or one DICOM series")
            cases += [Case(name, c.path, c.given, c.series, c.files, True) for c in found] if name else found
        else:
            cases.append(file_case(target, row["path"], name))
    return cases


def find_cases(inputs: list[str]) -> list[Case]:
    """Every case the ``inputs`` name, sorted by id; refuse (one line) what cannot make a cohort:
    InputImageError (exit 3) for a missing input or no volumes at all, UsageError (exit 2) for a bad CSV,
    an unsafe case name or one case name given to two different volumes."""
    found: list[Case] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise InputImageError(f"Input not found: {given}")
        if path.is_dir():
            found += folder_cases(path, given)
        elif path.suffix.lower() == ".csv":
            found += csv_cases(path, given)
        else:
            found.append(file_case(path, given))
    by_key: dict[tuple[str, str | None], Case] = {}
    for case in found:  # one path named twice is one case; a name a CSV gives wins over the generated one
        earlier = by_key.get(case.key)
        if earlier is not None and earlier.named and case.named and earlier.id != case.id:
            raise UsageError(f"{case.given} is named twice, as cases {earlier.id!r} and {case.id!r}")
        if earlier is None or (case.named and not earlier.named):
            by_key[case.key] = case
    cases = sorted(by_key.values(), key=lambda c: c.id)
    if not cases:
        raise InputImageError(f"No volumes found in {', '.join(inputs)} (NIfTI, NRRD, MHA files, DICOM series, "
                              "or a CSV with a 'path' column)")
    for a, b in zip(cases, cases[1:], strict=False):
        if a.id == b.id:
            raise UsageError(f"Two volumes have the case name {a.id!r}: {a.given} and {b.given}")
    return cases

