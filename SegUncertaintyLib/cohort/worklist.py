"""worklist.csv: one row per case of a cohort run, ranked by review priority (rank 1 = review first).

Fixed columns, in this order (``COLUMNS``), then per foreground class ``<class>:volume_ml`` and for each
score of ``SUBJECT_SCORES`` ``<class>:<score>`` and ``<class>:<score>:reading`` (the reading against the
model card's usual range: "within the model's usual range", "review recommended", "not defined", or
empty where the card gives no range):

- rank: 1..n in review-priority order;
- case: the case id (unique and stable; also the name of the case's output folder);
- status: "done", "skipped" (outputs already matched input and settings) or "failed";
- priority: the review-priority value (higher = review first; empty for a failed case);
- reason: one line saying why the case ranks where it does;
- reviewed: "" or "yes"; reviewed_at: ISO 8601 time it was marked; reviewer_note: free text;
- input: the input path as given; output: the case's output folder relative to the worklist's folder;
- seconds: wall time of the case; error: one-line error of a failed case.

Files are written to a temporary file in the same folder and renamed over the old one.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

WORKLIST_CSV = "worklist.csv"
COLUMNS = ("rank", "case", "status", "priority", "reason", "reviewed", "reviewed_at", "reviewer_note",
           "input", "output", "seconds", "error")
STATUSES = ("done", "skipped", "failed")


def class_columns(class_names: list[str]) -> list[str]:
    """The per-class columns after ``COLUMNS``, in order."""
    from ..inference.scores import SUBJECT_SCORES

    columns = []
    for name in class_names:
        columns.append(f"{name}:volume_ml")
        for score in SUBJECT_SCORES:
            columns += [f"{name}:{score}", f"{name}:{score}:reading"]
    return columns


def write_csv_atomic(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` (dicts keyed by ``columns``; missing keys empty) to ``path`` via a temporary file
    in the same folder renamed over it, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="raise", restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_worklist(path: str | os.PathLike) -> list[dict]:
    """The rows of a worklist.csv (a file path or the cohort folder holding it), as dicts of strings in
    file order; ValueError naming the file when it is not a worklist (a fixed column missing)."""
    path = Path(path)
    if path.is_dir():
        path = path / WORKLIST_CSV
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not a SegUncertainty worklist: column(s) {', '.join(missing)} missing")
        return list(reader)
