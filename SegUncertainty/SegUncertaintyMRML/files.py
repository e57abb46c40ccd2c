"""Atomic file writing: write beside the target under a temporary name, then rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(write: Callable[[str], object], path: str | Path) -> Path:
    """Call ``write(temporary_path)`` (a false result means failure) and rename the file onto ``path``.

    The temporary name keeps the extension (writers choose the format by it) and does not start with a
    dot (Slicer's .mrb writer derives a folder name from it). Nothing is left behind on failure.
    """
    path = Path(path)
    partial = path.with_name(f"partial{os.getpid()}-{path.name}")
    try:
        if not write(str(partial)) or not partial.is_file():
            raise OSError(f"Could not write {path}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
