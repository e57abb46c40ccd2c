"""Run one benchmark measurement in a fresh process (its own peak memory) and read its JSON result."""

from __future__ import annotations

import json
import subprocess


def run_child(cmd: list[str]) -> dict:
    """``cmd``'s last stdout line as JSON, or {"error": its last stderr line (or exit code)} on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else str(proc.returncode)}
    return json.loads(proc.stdout.strip().splitlines()[-1])
