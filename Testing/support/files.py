"""Reading what a run wrote."""

from __future__ import annotations

import json
from pathlib import Path


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
