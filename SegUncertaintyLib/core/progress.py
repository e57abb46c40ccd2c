"""Progress for people (a bar on stderr) and for programs (JSON lines on stdout).

"bar" draws a bar with carriage returns only on a terminal; when stderr is a file or a pipe (a log) it
writes plain lines instead: one per stage (a run) or per finished case (a cohort).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

ProgressCallback = Callable[[str, float, str], None]  # (stage, fraction 0-1, message)


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (a bar's carriage-return frames would litter a file)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressReporter:
    """Callable ``(stage, fraction, message)``; ``mode`` is "bar", "json" or "none"."""

    def __init__(self, mode: str = "bar", stream=None):
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.start = time.monotonic()
        self._last_stage = None
        self.live = is_terminal(self.stream)  # a bar; else plain lines

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.mode == "json":
            record = {"stage": stage, "fraction": round(float(fraction), 4), "message": message,
                      "elapsed_s": round(time.monotonic() - self.start, 2)}
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        elif self.mode == "bar" and not self.live:
            if stage != self._last_stage:
                self.stream.write(f"{stage}: {message}\n")
                self.stream.flush()
            self._last_stage = stage
        elif self.mode == "bar":
            if self._last_stage not in (None, stage):
                self.stream.write("\n")
            self._last_stage = stage
            filled = int(round(30 * fraction))
            self.stream.write(f"\r{stage:<12} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% "
                              f"{message[:40]:<40}")
            self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar" and self.live and self._last_stage is not None:
            self.stream.write("\n")
            self.stream.flush()


class CohortProgress:
    """Progress over a cohort, called once per finished case: ``(case, status, seconds)``.

    "bar": one line on stderr (cases done/total, failures, ETA; one line per case when not a terminal);
    "json": one JSON line per case on stdout
    ``{"case", "status", "seconds", "done", "total", "failed", "eta_s"}``; "none": nothing. The ETA is the
    mean wall time per finished case so far (elapsed / done, so parallel workers count) times the cases left.
    """

    def __init__(self, mode: str, total: int, stream=None):
        self.mode, self.total, self.done, self.failed = mode, total, 0, 0
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.start = time.monotonic()
        self.live = is_terminal(self.stream)  # a bar; else one line per case

    def eta_s(self) -> float | None:
        if not self.done:
            return None
        return (time.monotonic() - self.start) / self.done * (self.total - self.done)

    def __call__(self, case: str, status: str, seconds: float) -> None:
        self.done += 1
        self.failed += status == "failed"
        eta = self.eta_s()
        if self.mode == "json":
            record = {"case": case, "status": status, "seconds": round(float(seconds), 2), "done": self.done,
                      "total": self.total, "failed": self.failed, "eta_s": round(eta, 1)}
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        elif self.mode == "bar" and not self.live:
            self.stream.write(f"case {self.done}/{self.total} {status}: {case} ({seconds:.1f} s), "
                              f"{self.failed} failed\n")
            self.stream.flush()
        elif self.mode == "bar":
            filled = int(round(30 * self.done / max(self.total, 1)))
            minutes, secs = divmod(int(round(eta)), 60)
            self.stream.write(f"\rcases {self.done}/{self.total} [{'#' * filled}{'.' * (30 - filled)}] "
                              f"{self.failed} failed  ETA {minutes}:{secs:02d}  {case[:30]:<30}")
            self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar" and self.live and self.done:
            self.stream.write("\n")
            self.stream.flush()
