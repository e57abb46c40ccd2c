"""Progress for people (a bar on stderr) and for programs (JSON lines on stdout)."""

from __future__ import annotations

import json
import sys
import time


class ProgressReporter:
    """Callable ``(stage, fraction, message)``; ``mode`` is "bar", "json" or "none"."""

    def __init__(self, mode: str = "bar", stream=None):
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.start = time.monotonic()
        self._last_stage = None

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.mode == "json":
            record = {"stage": stage, "fraction": round(float(fraction), 4), "message": message,
                      "elapsed_s": round(time.monotonic() - self.start, 2)}
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        elif self.mode == "bar":
            if self._last_stage not in (None, stage):
                self.stream.write("\n")
            self._last_stage = stage
            filled = int(round(30 * fraction))
            self.stream.write(f"\r{stage:<12} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% "
                              f"{message[:40]:<40}")
            self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar" and self._last_stage is not None:
            self.stream.write("\n")
            self.stream.flush()
