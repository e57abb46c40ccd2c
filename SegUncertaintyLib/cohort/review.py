"""A reviewer's marks written back to a cohort's worklist.csv, and the checks every reader of a worklist needs.

``mark_reviewed`` sets ``reviewed`` / ``reviewed_at`` / ``reviewer_note`` of one row and rewrites the file
atomically (``worklist.write_csv_atomic``: same column order; every other row and column is written back as
it was read, so a file written by ``write_csv_atomic`` keeps those bytes). The read-modify-write runs under an
exclusive ``fcntl.flock`` on ``.seguncertainty-worklist.csv.lock`` beside the file (``locked``; the name
starts with io.publish's ``PREFIX``, so a cohort run counts it as its own), so two writers that both take
it (two Slicer instances, a cohort run rewriting its worklist) never lose each other's marks. Windows has no
``fcntl``: there the write is still atomic but not locked, and the last of two simultaneous writers wins.

When the cohort folder has a worklist.html, it is written again from the marked rows
(``worklist_html.write_html``, under the same lock), so the page shows the mark too; the CSV is the record.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..io.publish import PREFIX
from .worklist import WORKLIST_CSV, read_worklist, write_csv_atomic
from .worklist_html import WORKLIST_HTML, write_html

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see the module docstring)
    fcntl = None

REVIEWED = "yes"


class WorklistError(ValueError):
    """The file is not a usable worklist, or names no such case; the message says which and why."""


def worklist_file(path: str | os.PathLike) -> Path:
    """The worklist.csv that ``path`` names (the file, or the cohort folder holding it), made absolute."""
    path = Path(path).absolute()
    return path / WORKLIST_CSV if path.is_dir() else path


def case_folder(worklist_dir: Path, row: dict) -> Path | None:
    """The case's output folder (``output``, relative to the worklist's folder); None for a row without one.

    WorklistError when it leaves ``worklist_dir``: absolute, with '..', the folder itself, or resolving
    (symbolic links followed) outside it."""
    output = row.get("output") or ""
    if not output:
        return None
    relative = Path(output)
    root = worklist_dir.resolve()
    folder = (root / relative).resolve()
    if relative.is_absolute() or ".." in relative.parts or folder == root or not folder.is_relative_to(root):
        raise WorklistError(f"Refused worklist {worklist_dir / WORKLIST_CSV}: the output of case "
                            f"'{row.get('case')}' ({output}) is not a folder inside the worklist's folder")
    return folder


def check_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows, checked: one value per column, unique non-empty case ids, integer ranks, known statuses,
    outputs confined to the worklist's folder (a row that did not fail must have one); WorklistError."""
    from .worklist import STATUSES

    seen = set()
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise WorklistError(f"{path} is not a SegUncertainty worklist: line {line} has the wrong number "
                                "of values")
        case = row["case"]
        if not case or case in seen:
            raise WorklistError(f"{path}: line {line} has an empty or repeated case id '{case}'")
        seen.add(case)
        if not row["rank"].isdigit():
            raise WorklistError(f"{path}: case '{case}' has rank '{row['rank']}', not a positive integer")
        if row["status"] not in STATUSES:
            raise WorklistError(f"{path}: case '{case}' has status '{row['status']}', not one of "
                                f"{', '.join(STATUSES)}")
        if case_folder(path.parent, row) is None and row["status"] != "failed":
            raise WorklistError(f"{path}: case '{case}' ({row['status']}) names no output folder")
    return rows


def open_worklist(path: str | os.PathLike) -> tuple[Path, list[dict]]:
    """(the worklist.csv path, its checked rows in file order); WorklistError with one line otherwise."""
    path = worklist_file(path)
    try:
        rows = read_worklist(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise WorklistError(f"Could not read worklist {path}: {exc}") from exc
    except ValueError as exc:  # read_worklist: not a worklist (a fixed column missing)
        raise WorklistError(str(exc)) from exc
    return path, check_rows(path, rows)


def lock_file(path: Path) -> Path:
    """The lock file of worklist ``path``: a hidden file beside it with this tool's prefix."""
    return path.with_name(f"{PREFIX}{path.name}.lock")


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of worklist ``path`` (``lock_file(path)``, created if missing; never
    truncated). Every writer of a worklist should rewrite it only while holding this lock."""
    path = worklist_file(path)
    fd = os.open(lock_file(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _columns(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def mark_reviewed(worklist_path: str | os.PathLike, case: str, reviewed: bool = True, note: str = "") -> dict:
    """Mark ``case`` reviewed (``reviewed`` "yes", ``reviewed_at`` now in ISO 8601 UTC) or not reviewed (both
    empty), with ``reviewer_note`` = ``note`` (one line), in the worklist; returns the row as written.

    WorklistError, with the file untouched, for a file that is not a worklist, an unknown case or outputs
    outside the worklist's folder."""
    path = worklist_file(worklist_path)
    note = " ".join(str(note).splitlines()).strip()  # one line: the worklist is read line by line too
    if not path.is_file():  # checked before the lock: no lock file left where there is no worklist
        raise WorklistError(f"No worklist at {path}")
    with locked(path):
        path, rows = open_worklist(path)
        row = next((r for r in rows if r["case"] == case), None)
        if row is None:
            raise WorklistError(f"{path} has no case '{case}'")
        row["reviewed"] = REVIEWED if reviewed else ""
        row["reviewed_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if reviewed else ""
        row["reviewer_note"] = note
        columns = _columns(path)
        write_csv_atomic(path, rows, columns)
        if (path.parent / WORKLIST_HTML).is_file():
            write_html(rows, columns, path.parent)
    return dict(row)
