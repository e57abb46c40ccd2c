"""A cohort read from a PACS and its DICOM results sent back (``cohort --dicomweb``, ``--store``,
``--store-dimse``; ``send FOLDER``).

Reading: the CT and MR series a QIDO-RS search finds are retrieved by WADO-RS into ``<cohort>/dicomweb/``,
one folder per series (``<SeriesInstanceUID>/``, its instances as ``<n>.dcm`` in SOPInstanceUID order) and
a record ``<SeriesInstanceUID>.json`` (study and series UIDs, the sorted SOPInstanceUIDs and the sha256 of
the files, each file's bytes in that order). A series whose instances differ between the listing before
retrieval, the instances retrieved and a second listing after it has changed on the server: it is refused
(:class:`SeriesChanged`) and nothing of it is kept; in a cohort only its case fails (worklist.csv gives the
reason; the other series go on; exit 8, COHORT_CASES_FAILED). A cached series whose listing and checksum
still match is not retrieved again.

Storing: each finished case's ``dicom/`` objects (the run's manifest lists them) go to a DICOMweb server by
STOW-RS, sending only the instances the server does not hold yet (a QIDO-RS search of the study by
SOPInstanceUID), or to a DIMSE node by C-STORE, sending only those a C-FIND (IMAGE level, per series) does not
find there; a node that answers no C-FIND gets every object (their UIDs are derived from the run, so it
keeps one copy). worklist.csv records per case ``stored_to`` (the server's URL, or ``dimse:AET@HOST:PORT``),
``stored`` (objects on the server / objects of the run, e.g. ``7/7``), ``store_error`` and
``store_checked`` (how the objects already there were found: ``QIDO-RS``, ``C-FIND``, or ``no C-FIND: ...``
with the reason, every object sent). A store cut short (server down, refusal) records what was stored,
leaves every local file in place and raises PacsError; the next run (or ``send``) sends only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PacsError, UsageError
from ..io.dicomweb import DicomWeb, RemoteSeries, dimse_store, parse_dimse

CACHE = "dicomweb"  # the cohort folder's cache of retrieved series


class SeriesChanged(PacsError):
    """A series whose instances changed on the server while it was read (exit 7 alone, a failed case in a
    cohort)."""


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOMweb server (``web``) or a DIMSE node (``dimse``, ``AET@HOST:PORT``)."""

    web: DicomWeb | None = None
    dimse: str | None = None

    def __post_init__(self):
        if (self.web is None) == (self.dimse is None):
            raise UsageError("name one destination: --dicomweb URL or --store-dimse AET@HOST:PORT")
        if self.dimse is not None:
            parse_dimse(self.dimse)

    @property
    def label(self) -> str:
        return self.web.url if self.web is not None else f"dimse:{self.dimse}"


# -- reading -------------------------------------------------------------------------------------------
def _checksum(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cached(record_path: Path, folder: Path, instances: list[str]) -> bool:
    """Whether the cache holds exactly ``instances`` with the checksum its record states."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = [folder / f"{n}.dcm" for n in range(1, len(instances) + 1)]
    return (record.get("instances") == instances and all(f.is_file() for f in files)
            and sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in files)
            and record.get("sha256") == _checksum(files))


def retrieve(server: DicomWeb, remote: RemoteSeries, cache: Path) -> Path:
    """``remote`` in ``cache``/<series UID>/ (retrieved unless cached with the same listing and checksum); the
    folder. SeriesChanged when the series changes on the server while it is read (nothing of it kept);
    PacsError when the server fails."""
    listed = sorted(server.instance_uids(remote.study, remote.series))
    folder, record_path = cache / remote.series, cache / f"{remote.series}.json"
    if listed and _cached(record_path, folder, listed):
        return folder
    datasets = sorted(server.retrieve_series(remote.study, remote.series), key=lambda d: str(d.SOPInstanceUID))
    retrieved = [str(d.SOPInstanceUID) for d in datasets]
    after = sorted(server.instance_uids(remote.study, remote.series))
    if not listed or retrieved != listed or after != listed:
        raise SeriesChanged(f"Series {remote.series} changed on {server.url} while it was read ({len(listed)} "
                            f"instances listed, {len(retrieved)} retrieved, {len(after)} listed after); it was not "
                            "used; run again once the series is complete")
    staging = cache / f".{remote.series}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    for number, dataset in enumerate(datasets, start=1):
        files.append(staging / f"{number}.dcm")
        dataset.save_as(files[-1], enforce_file_format=False)
    record = {"study": remote.study, "series": remote.series, "modality": remote.modality,
              "description": remote.description, "source": server.url, "instances": listed,
              "sha256": _checksum(files)}
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, record_path)
    return folder


def fetch_series(server: DicomWeb, root: Path, studies: Sequence[str] = (), query: dict[str, str] | None = None,
                 series: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
    """Retrieve the matching CT and MR series into ``root``/dicomweb/; (their folders: the cohort's inputs,
    the series that changed while read: failed cases with ``case`` (the id the series' case has once read),
    ``input`` and ``error``). PacsError (exit 7) when nothing matches or the server fails."""
    found = server.find_series(studies, query, series)
    if not found:
        asked = ", ".join([*(f"study {s}" for s in studies), *(f"{k}={v}" for k, v in (query or {}).items()),
                           *(f"series {s}" for s in series)])
        raise PacsError(f"No CT or MR series on {server.url} matches {asked or 'the search'}")
    from .cases import series_case_id

    cache = root / CACHE
    cache.mkdir(exist_ok=True)
    folders, changed = [], []
    for remote in found:
        try:
            folders.append(str(retrieve(server, remote, cache)))
        except SeriesChanged as exc:
            where = cache / remote.series
            changed.append({"case": series_case_id(os.path.realpath(where), remote.series), "input": str(where),
                            "error": str(exc)})
    return folders, changed


# -- storing -------------------------------------------------------------------------------------------
def run_objects(case_folder: Path) -> list[dict]:
    """The DICOM objects a run folder's manifest lists (``file`` made absolute), in manifest order; [] for a
    run without ``--dicom``."""
    from ..core.manifest import read_manifest

    manifest = read_manifest(case_folder)
    objects = []
    for entry in manifest.get("outputs", []):
        if entry.get("kind") == "dicom":
            for obj in entry.get("objects", []):
                path = (case_folder / entry["file"] / obj["file"]).resolve()
                if not path.is_relative_to(case_folder.resolve()):
                    raise UsageError(f"{case_folder}: DICOM object {obj['file']!r} lies outside the run folder")
                objects.append({**obj, "file": path})
    return objects


def store_run(case_folder: Path, destination: Destination) -> tuple[int, int, str]:
    """Send the run's DICOM objects the destination lacks; (objects now on the destination, objects of the
    run, how those already there were found). PacsError on a failure of the destination, its ``stored`` the
    objects of the run already there (they stay)."""
    import pydicom

    objects = run_objects(case_folder)
    if not objects:
        return 0, 0, ""
    if destination.dimse is not None:
        stored, checked = dimse_store(destination.dimse, [o["file"] for o in objects])
        return stored, len(objects), checked
    web = destination.web
    datasets = [pydicom.dcmread(o["file"]) for o in objects]
    on_server = 0
    try:
        for study in sorted({str(d.StudyInstanceUID) for d in datasets}):
            in_study = [d for d in datasets if str(d.StudyInstanceUID) == study]
            present = web.instance_uids(study)
            on_server += sum(str(d.SOPInstanceUID) in present for d in in_study)
            for dataset in in_study:  # one request each: a store cut short keeps every instance it completed
                if str(dataset.SOPInstanceUID) not in present:
                    web.store([dataset], study)
                    on_server += 1
    except PacsError as exc:
        exc.stored = on_server
        raise
    return on_server, len(objects), "QIDO-RS"


def store_rows(root: Path, rows: list[dict], destination: Destination) -> tuple[int, str]:
    """Send every finished case's objects (rows of ``root``'s worklist) and record it in the rows'
    ``STORE_COLUMNS``; (objects sent or already there, first error or ""). After a destination failure the
    remaining cases are marked not sent."""
    total, error = 0, ""
    for row in rows:
        if row.get("status") not in ("done", "skipped") or not row.get("output"):
            continue
        row["stored_to"] = destination.label
        if error:
            row["stored"], row["store_error"] = "0", f"not sent: {error}"
            continue
        try:
            stored, count, row["store_checked"] = store_run(root / row["output"], destination)
        except PacsError as exc:
            error = str(exc)
            row["stored"], row["store_error"] = f"{exc.stored}/{len(run_objects(root / row['output']))}", error
            total += exc.stored
            continue
        row["stored"], row["store_error"] = f"{stored}/{count}", ""
        total += stored
    return total, error


def store_cohort(root: Path, destination: Destination, rows: list[dict] | None = None) -> tuple[int, list[dict]]:
    """Store the DICOM objects of cohort folder ``root`` (its worklist's rows, or ``rows``) and rewrite
    worklist.csv with the store columns; (objects on the destination, rows). PacsError (after the worklist is
    written) when the destination failed."""
    from . import review
    from .worklist import WORKLIST_CSV, read_worklist, worklist_columns, write_csv_atomic
    from .worklist_html import write_html

    with review.locked(root / WORKLIST_CSV):
        rows = read_worklist(root / WORKLIST_CSV) if rows is None else rows
        stored, error = store_rows(root, rows, destination)
        columns = worklist_columns(rows)
        write_csv_atomic(root / WORKLIST_CSV, rows, columns)
        write_html(rows, columns, root)
    if error:
        raise PacsError(f"{error}; what was stored is listed in {root / WORKLIST_CSV}; run again to send the rest")
    return stored, rows


def send_folder(folder: Path, destination: Destination) -> tuple[int, int]:
    """``seguncertainty send``: the DICOM objects of a run folder or of every case of a cohort folder;
    (objects on the destination, cases sent)."""
    from .cases import COHORT_MANIFEST
    from .worklist import WORKLIST_CSV

    if not folder.is_dir():
        raise UsageError(f"send: {folder} is not a folder")
    if (folder / COHORT_MANIFEST).is_file() and (folder / WORKLIST_CSV).is_file():
        stored, rows = store_cohort(folder, destination)
        return stored, sum(bool(r.get("stored")) for r in rows)
    from ..core.manifest import ManifestError

    try:
        stored, count, _ = store_run(folder, destination)
    except ManifestError as exc:
        raise UsageError(f"send: {folder} is neither a run nor a cohort folder of this tool (manifest.json: "
                         f"{exc})") from None
    if count == 0:
        raise UsageError(f"send: {folder} holds no DICOM objects (run it with --dicom)")
    return stored, 1
