"""review.mark_reviewed on hand-made worklists (written with worklist.write_csv_atomic, as a cohort run
writes them): round trip, every other byte unchanged, refusals leave the file alone, and two processes
marking at the same time both keep their marks."""

from __future__ import annotations

import multiprocessing
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from SegUncertaintyLib.cohort import review
from SegUncertaintyLib.cohort.worklist import COLUMNS, class_columns, read_worklist, write_csv_atomic

CLASS_COLUMNS = class_columns(["brain"])


def make_worklist(folder: Path, n: int = 3, failed: tuple[int, ...] = ()) -> Path:
    """A worklist of ``n`` cases c0..c{n-1} (rank i + 1) with values that need CSV quoting (commas, quotes),
    each done case with an (empty) output folder case_<i>; the rows listed in ``failed`` failed."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        done = i not in failed
        if done:
            (folder / f"case_{i}").mkdir(exist_ok=True)
        rows.append({"rank": str(i + 1), "case": f"c{i}", "status": "done" if done else "failed",
                     "priority": f"{3.5 - i:.2f}" if done else "", "reason": f'entropy high, "x{i}"',
                     "input": f"/data/in {i}.nii.gz", "output": f"case_{i}" if done else "",
                     "seconds": "1.5", "error": "" if done else "Could not read image file",
                     "brain:volume_ml": "12.25", CLASS_COLUMNS[1]: "0.1"})
    path = folder / "worklist.csv"
    write_csv_atomic(path, rows, [*COLUMNS, *CLASS_COLUMNS])
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\r\n")


def test_mark_round_trip_changes_only_that_row(tmp_path):
    path = make_worklist(tmp_path / "cohort", n=4)
    before, rows_before = lines(path), read_worklist(path)
    start = datetime.now(timezone.utc).replace(microsecond=0)
    row = review.mark_reviewed(path, "c2", note="looked fine,\nleft lobe")
    rows = read_worklist(path)
    assert rows[2] == row and row["reviewed"] == "yes" and row["reviewer_note"] == "looked fine, left lobe"
    at = datetime.strptime(row["reviewed_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert start <= at <= datetime.now(timezone.utc) + timedelta(seconds=1)
    after = lines(path)
    assert after[0] == before[0]  # the header: same columns in the same order
    assert [a for k, a in enumerate(after) if k != 3] == [b for k, b in enumerate(before) if k != 3]
    assert after[3] != before[3]
    # every other field of the marked row is as it was
    marks = ("reviewed", "reviewed_at", "reviewer_note")
    assert {k: v for k, v in rows[2].items() if k not in marks} == \
        {k: v for k, v in rows_before[2].items() if k not in marks}

    review.mark_reviewed(tmp_path / "cohort", "c2", reviewed=False)  # the folder names its worklist too
    assert lines(path) == before  # unmarked: the file is byte for byte the original again
    assert not list(path.parent.glob(".worklist.csv.*.tmp"))


@pytest.mark.parametrize("problem", ["unknown case", "not a worklist", "outside", "absolute", "symlink",
                                     "dot-dot", "no output", "rank", "status", "duplicate"])
def test_refusals_leave_the_file_untouched(tmp_path, problem):
    path = make_worklist(tmp_path / "cohort")
    rows = read_worklist(path)
    columns = [*COLUMNS, *CLASS_COLUMNS]
    if problem == "not a worklist":
        columns.remove("reviewed_at")
        for row in rows:
            del row["reviewed_at"]
    elif problem == "outside":
        (tmp_path / "elsewhere").mkdir()
        rows[1]["output"] = "../elsewhere"
    elif problem == "absolute":
        rows[1]["output"] = str(tmp_path / "cohort" / "case_1")  # inside, but an absolute path is refused
    elif problem == "symlink":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "cohort" / "link").symlink_to(tmp_path / "elsewhere")
        rows[1]["output"] = "link"
    elif problem == "dot-dot":
        rows[1]["output"] = "case_1/../case_0"
    elif problem == "no output":
        rows[1]["output"] = ""
    elif problem == "rank":
        rows[1]["rank"] = "second"
    elif problem == "status":
        rows[1]["status"] = "pending"
    elif problem == "duplicate":
        rows[1]["case"] = "c0"
    write_csv_atomic(path, rows, columns)
    before = path.read_bytes()
    with pytest.raises(review.WorklistError) as error:
        review.mark_reviewed(path, "nope" if problem == "unknown case" else "c0")
    assert path.read_bytes() == before
    message = str(error.value)
    expected = {"unknown case": "has no case 'nope'", "not a worklist": "column(s) reviewed_at missing",
                "no output": "names no output folder", "rank": "not a positive integer",
                "status": "not one of", "duplicate": "repeated case id"}.get(problem, "not a folder inside")
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00binary", b"path,case\n/a.nii.gz,a\n", None])
def test_files_that_are_not_worklists_are_refused_with_one_line(tmp_path, content):
    path = tmp_path / "worklist.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(review.WorklistError) as error:
        review.mark_reviewed(tmp_path, "a")
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    assert path.read_bytes() == content if content is not None else not list(tmp_path.iterdir())


def test_worklist_html_is_written_again_only_where_there_is_one(tmp_path):
    from SegUncertaintyLib.cohort.worklist_html import render, write_html

    path = make_worklist(tmp_path / "cohort")
    review.mark_reviewed(path, "c1", note="no page here")
    assert not (tmp_path / "cohort" / "worklist.html").exists()  # none made where the cohort wrote none
    columns = [*COLUMNS, *CLASS_COLUMNS]
    write_html(read_worklist(path), columns, path.parent)
    review.mark_reviewed(path, "c0", note="seen <b>here</b>")
    page = (tmp_path / "cohort" / "worklist.html").read_text()
    assert page == render(read_worklist(path), columns, path.parent)  # the page of the marked rows
    assert "seen &lt;b&gt;here&lt;/b&gt;" in page


def test_a_failed_case_without_output_can_be_marked(tmp_path):
    path = make_worklist(tmp_path / "cohort", failed=(1,))
    assert review.mark_reviewed(path, "c1", note="unreadable input")["reviewed"] == "yes"


def _mark_many(path: str, cases: list[str], start, disable_lock: bool) -> None:
    if disable_lock:
        review.fcntl = None
    start.wait()
    for case in cases:
        review.mark_reviewed(path, case, note=f"by {os.getpid()}")


def run_two_writers(path: Path, n: int, disable_lock: bool = False) -> list[dict]:
    """Two processes mark the even and the odd cases at the same time; the rows afterwards."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    writers = [context.Process(target=_mark_many, args=(str(path), [f"c{i}" for i in range(k, n, 2)], start,
                                                        disable_lock)) for k in (0, 1)]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    return read_worklist(path)


def test_two_processes_marking_at_once_keep_every_mark(tmp_path):
    path = make_worklist(tmp_path / "cohort", n=40)
    rows = run_two_writers(path, 40)
    assert [r["reviewed"] for r in rows] == ["yes"] * 40
    assert len({r["reviewer_note"] for r in rows}) == 2  # both writers' notes are there
    assert not (tmp_path / "cohort" / ".seguncertainty-worklist.csv.lock").read_bytes()  # only a lock


@pytest.mark.skipif(review.fcntl is None, reason="no fcntl: no lock to compare with")
def test_without_the_lock_the_same_writers_lose_marks(tmp_path):
    """The race the lock prevents is real: the same two writers without it lose marks (most runs; a run
    where the scheduler happens to serialize them is retried)."""
    for attempt in range(5):
        path = make_worklist(tmp_path / f"cohort{attempt}", n=40)
        rows = run_two_writers(path, 40, disable_lock=True)
        if sum(r["reviewed"] == "yes" for r in rows) < 40:
            return
    pytest.fail("40 concurrent unlocked marks were never lost: the lock test above proves nothing")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_worklist_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    """worklist.csv and worklist.html (rewritten by marks too) are readable by colleagues: 0666 less the
    umask, like the run's other outputs, not tempfile's private 0600."""
    from SegUncertaintyLib.cohort.worklist_html import write_html
    from SegUncertaintyLib.io.images import write_json

    previous = os.umask(umask)
    try:
        path = make_worklist(tmp_path / "cohort")
        write_html(read_worklist(path), [*COLUMNS, *CLASS_COLUMNS], path.parent)
        review.mark_reviewed(path, "c1", note="checked")
        write_json({"a": 1}, tmp_path / "cohort" / "x.json")
    finally:
        os.umask(previous)
    for name in ("worklist.csv", "worklist.html", "x.json"):
        assert (tmp_path / "cohort" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list((tmp_path / "cohort").glob(".*.tmp"))
