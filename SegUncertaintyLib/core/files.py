"""Plain file helpers shared by every layer (and the Slicer glue): atomic text writes, file and DICOM series
sha256, the DICOM preamble. Standard library only."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path


def safe_stems(names: Iterable[str]) -> dict[str, str]:
    """A portable file-name part per name (output files are named by class): every character but ASCII
    letters, digits, '.', '_' and '-' becomes '_' ("left kidney" -> "left_kidney"), as does a leading '.' or
    '-', an empty name is "class"; a part equal to an earlier one (ignoring case: macOS and Windows) gets
    "_2", "_3", ... The name itself stays in the manifest entry's ``label``."""
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "class"
        stem = "_" + stem[1:] if stem[0] in ".-" else stem
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        stems[name] = candidate
    return stems


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``: a reader
    never sees half a file. The file gets the permissions of any new file (0666 less the umask), not
    tempfile's private 0600, so colleagues can open a shared worklist. OSError on failure, nothing left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """True when the file holds "DICM" after its 128-byte preamble (a DICOM Part 10 file); False when it
    does not or cannot be read."""
    try:
        with open(path, "rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def series_sha256(folder: str | os.PathLike, files: Iterable[str | os.PathLike]) -> str:
    """A DICOM series' digest: sha256 over each file's path relative to ``folder`` and the file's sha256, in
    relative-path order (symbolic links resolved first), so a series moved with its folder keeps its digest.
    The cohort records it and the Slicer worklist checks it: one definition for both."""
    root = os.path.realpath(folder)
    digest = hashlib.sha256()
    for relative in sorted(os.path.relpath(os.path.realpath(f), root) for f in files):
        line = f"{relative}\0{sha256_file(os.path.join(root, relative))}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in an untrusted file; ``error`` (one line naming ``what``, the file and the problem)
    when it cannot be read, is not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"Cannot read {what} {path}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise error(f"{what[:1].upper()}{what[1:]} {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what[:1].upper()}{what[1:]} {path} is not a JSON object")
    return data
