"""Progress on stderr: a bar on a terminal, plain lines in a log file or a pipe; JSON lines for programs."""

from __future__ import annotations

import io
import json
import os

from SegUncertaintyLib.core.progress import CohortProgress, ProgressReporter


def _run(reporter) -> None:
    for stage in ("load", "inference"):
        for fraction in (0.0, 0.5, 1.0):
            reporter(stage, fraction, f"{stage} {fraction}")
    reporter.close()


def test_no_bar_frames_when_stderr_is_not_a_terminal():
    """Into a file (a log): one plain line per stage, no carriage-return frames (before: 6 frames, one line)."""
    log = io.StringIO()
    _run(ProgressReporter("bar", log))
    assert log.getvalue() == "load: load 0.0\ninference: inference 0.0\n"
    cases = io.StringIO()
    progress = CohortProgress("bar", 2, cases)
    progress("a", "done", 1.25)
    progress("b", "failed", 2.0)
    progress.close()
    assert cases.getvalue() == "case 1/2 done: a (1.2 s), 0 failed\ncase 2/2 failed: b (2.0 s), 1 failed\n"


def test_a_bar_on_a_terminal_and_json_lines_for_programs():
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal:
        _run(ProgressReporter("bar", terminal))
    chunks = []
    while True:  # one read may return only part of what the terminal holds (seen on a loaded machine)
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    drawn = b"".join(chunks).decode()
    os.close(primary)
    assert drawn.replace("\r\n", "\n").count("\r") == 6 and "100.0%" in drawn  # the terminal adds \r to \n
    stream = io.StringIO()
    _run(ProgressReporter("json", stream))
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["stage"], r["fraction"]) for r in records][:3] == [("load", 0.0), ("load", 0.5), ("load", 1.0)]
