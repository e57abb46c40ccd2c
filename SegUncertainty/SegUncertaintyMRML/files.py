"""Atomic file writing: write into a private folder beside the target, then rename onto the target."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(write: Callable[[str], object], path: str | Path) -> Path:
    """Call ``write(temporary_path)`` (a false result means failure) and rename the file onto ``path``.

    The temporary file has the target's name (writers choose the format by its extension) inside a private
    folder in the target's folder (same file system, so the rename is atomic). The folder and whatever a
    failed writer left in it are removed: an existing target is untouched unless the write succeeded.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OSError(f"Could not write {path}: {path.parent} is not a folder")
    private = Path(tempfile.mkdtemp(prefix=".seguncertainty-", dir=path.parent))
    try:
        partial = private / path.name
        if not write(str(partial)) or not partial.is_file():
            raise OSError(f"Could not write {path}")
        os.replace(partial, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return path
