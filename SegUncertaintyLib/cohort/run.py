"""A cohort run: cases -> items -> ``run_tasks`` -> rows -> worklist.csv (``run_cohort``, the CLI's engine).

The cohort folder holds one sub-folder per case (named by its id), ``worklist.csv``, ``worklist.html``
and ``cohort.json``, the list of everything the tool wrote there (the case folders of every run into it).
A folder holding anything else is refused (OutputError, exit 5), and a lock (io.publish) refuses a second
cohort run into the same folder while one runs. The reviewer's columns of an earlier worklist (reviewed,
reviewed_at, reviewer_note) are kept: all three for a case whose outputs did not change (skipped or failed
again), the note only for a case recomputed; rows of earlier cases this run did not finish (cancelled, or
not among its inputs) are kept at the end, with status "stale" where computed with other settings
(worklist.stale_rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..core.errors import CancelledError, SegUncertaintyError, UsageError
from ..core.options import SegmentOptions
from . import review, worker
from .cases import COHORT_MANIFEST, Case, find_cases
from .executors import check_executor, run_tasks
from .worklist import (
    REVIEW_FIELDS,
    WORKLIST_CSV,
    rank_rows,
    read_worklist,
    stale_rows,
    worklist_columns,
    write_csv_atomic,
)
from .worklist_html import WORKLIST_HTML, write_html

_TEMPORARY = re.compile(r"\.(cohort\.json|worklist\.csv|worklist\.html)\..+\.tmp")  # an atomic write cut short


def _listed(folder: Path) -> set[str] | None:
    from ..io.publish import listed_files

    return listed_files(folder, COHORT_MANIFEST)


def cohort_files(folder: Path) -> set[str] | None:
    """What a cohort folder may hold: the entries its cohort.json lists, and this tool's temporary and
    lock files (io.publish); None when it has no cohort.json written by this tool."""
    from ..io.publish import PREFIX

    listed = _listed(folder)
    if listed is None:
        return None
    try:
        extra = {p.name for p in folder.iterdir() if p.name.startswith(PREFIX) or _TEMPORARY.fullmatch(p.name)}
    except OSError:
        extra = set()
    return listed | extra


def _write_manifest(folder: Path, names: set[str]) -> None:
    from ..io.images import write_json

    write_json({"format_version": 1, "tool": f"seguncertainty {__version__}",
                "outputs": [{"file": name} for name in sorted(names)]}, folder / COHORT_MANIFEST)


def _item(case: Case, root: Path, options: SegmentOptions, threads: int | None) -> dict:
    return {"case": case.id, "path": case.path, "input": case.given, "series": case.series, "files": list(case.files),
            "out": str(root / case.id), "options": options.as_dict(), "threads": threads}


def _current_settings(done: list[dict], options: SegmentOptions) -> dict:
    """This run's ``SETTING_COLUMNS`` as far as known: from a finished case, else the method and the
    requested sample count (the model's name is known only once a case loaded it)."""
    finished = next((r for r in done if r["status"] != "failed"), None)
    if finished is not None:
        return {"method": finished["method"], "model": finished["model"], "samples": str(finished["n_samples"])}
    return {"method": options.method, **({"samples": str(options.samples)} if options.samples else {})}


def _keep_reviews(rows: list[dict], folder: Path, current: dict) -> list[dict]:
    """``rows`` with the reviewer's columns of the earlier worklist, then the earlier rows of cases not in
    this run, stale where computed with other settings than ``current`` (see the module docstring)."""
    try:
        earlier = {row["case"]: row for row in read_worklist(folder / WORKLIST_CSV)}
    except (OSError, ValueError):
        return rows
    for row in rows:
        old = earlier.pop(row["case"], None)
        if old is not None:
            for field in REVIEW_FIELDS if row["status"] != "done" else ("reviewer_note",):
                row[field] = old.get(field, "")
    return rows + stale_rows(list(earlier.values()), current, len(rows) + 1)


def _cases(inputs: Sequence[str | os.PathLike], options: SegmentOptions) -> list[Case]:
    """The inputs' cases (cases.find_cases); UsageError for an image-file case with ``--dicom``."""
    cases = find_cases([os.fspath(p) for p in inputs])
    images = [c.given for c in cases if c.series is None]
    if options.dicom and images:
        more = f" and {len(images) - 1} more" if len(images) > 1 else ""
        raise UsageError(f"--dicom needs DICOM series inputs; {images[0]}{more} is not a DICOM series")
    return cases


def run_cohort(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, options: SegmentOptions | None = None,
               workers: int = 1, executor: str = "local", address: str | None = None, progress: str = "none",
               cancelled: Callable[[], bool] | None = None,
               fetch: Callable[[Path], tuple[Sequence[str], list[dict]]] | None = None) -> list[dict]:
    """Segment every case ``inputs`` name into ``out``/<case id>/ and write ``out``/worklist.csv; return its
    rows (dicts of strings, in review order).

    Cases whose folder already holds outputs for the same input and settings are skipped; a failing case
    is recorded (status "failed", one-line error) and the others go on. ``cancelled`` (polled between
    cases; in-process cases also between forward passes): no new case starts, the worklist is written for
    the finished ones, then CancelledError. An executor that fails itself (a cluster lost; not a case's
    error) also leaves the worklist of the finished cases, then SegUncertaintyError (exit 1). Refusals
    before any case runs: UsageError (options, CSV, case names), InputImageError (no inputs), OutputError
    (``out`` not ours, or another run holds it). ``fetch`` (cohort/pacs.py): called with the cohort folder,
    locked and listing ``pacs.CACHE``, it fills that cache and returns the inputs (``inputs`` is then unused)
    and the series it could not use, each a failed case (``case``, ``input``, one-line ``error``).
    """
    from ..core.progress import CohortProgress
    from ..io.publish import OutputFolder

    options = options or SegmentOptions()
    options.check()
    check_executor(executor, workers, address)  # before the cohort folder is touched
    if Path(options.model).exists():  # a model folder or card: the same one from any worker's folder
        options = dataclasses.replace(options, model=str(Path(options.model).resolve()))
    cases = _cases(inputs, options) if fetch is None else []
    unread: list[dict] = []  # series fetch could not use: failed cases that never ran
    with OutputFolder(out, cohort_files) as cohort:
        root = cohort.path
        root.mkdir(exist_ok=True)
        if fetch is not None:
            from .pacs import CACHE

            _write_manifest(root, (_listed(root) or set()) | {CACHE})
            fetched, unread = fetch(root)
            cases = _cases(fetched, options) if fetched else []
        _write_manifest(root, (_listed(root) or set()) | {c.id for c in cases} | {WORKLIST_CSV, WORKLIST_HTML})
        in_process = executor == "local" and workers == 1
        threads = max(1, (os.cpu_count() or 1) // workers) if executor == "local" and workers > 1 else None
        items = [_item(c, root, options, threads) for c in cases]
        results: dict[int, dict] = {}
        lost: Exception | None = None  # the executor itself failed (a cluster lost): what finished is kept
        reporter = CohortProgress(progress, len(items))
        worker.set_cancel(cancelled if in_process else None)
        try:
            finished = run_tasks(worker.process_case, items, executor, workers, address)
            try:
                for index, result in finished:
                    if result.get("status") != "cancelled":
                        case = items[index]
                        results[index] = {"scores": None, "score_reference": None, "seconds": 0.0, "error": "",
                                          **result, "case": case["case"], "input": case["input"]}
                        reporter(case["case"], results[index]["status"], results[index]["seconds"])
                    if cancelled is not None and cancelled():
                        break
            except Exception as exc:  # not a case's error (those come back as results): the executor's
                lost = exc
            finally:
                with contextlib.suppress(AttributeError):
                    finished.close()
        finally:
            reporter.close()
            worker.set_cancel(None)
            if in_process:
                worker.release_models()
        done = [results[i] for i in sorted(results)]
        for result in done:
            result["output"] = result["case"] if result["status"] != "failed" else ""
        failed_reads = [{"status": "failed", "scores": None, "score_reference": None, "seconds": 0.0, "output": "",
                         "method": options.method, "model": Path(options.model).name, "n_samples": options.samples,
                         **case} for case in unread]
        reference = next((r["score_reference"] for r in done if r["status"] != "failed"), None)
        with review.locked(root / WORKLIST_CSV):  # a reviewer's mark made meanwhile is read, never lost
            rows = _keep_reviews(rank_rows(done + failed_reads, reference), root, _current_settings(done, options))
            columns = worklist_columns(rows)
            write_csv_atomic(root / WORKLIST_CSV, rows, columns)
            write_html(rows, columns, root)
    if lost is not None:
        raise SegUncertaintyError(
            f"The {executor} executor failed after {len(done)} of {len(items)} cases ({type(lost).__name__}: "
            f"{lost}); the finished cases are listed in {root / WORKLIST_CSV}; run the same command again "
            "to resume") from lost
    if cancelled is not None and cancelled():
        raise CancelledError(f"Cancelled by the user: {len(done)} of {len(items)} cases finished, listed in "
                             f"{root / WORKLIST_CSV}; run the same command again to resume")
    return rows

