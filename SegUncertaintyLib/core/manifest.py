"""A run folder's ``manifest.json``: built and parsed here only (json and pathlib: the Slicer glue imports it).

The manifest names every file a ``segment`` run wrote and its meaning, the input, the model (name,
version, folder, each weight file's sha256), the method, the sample count, the device, the settings and
the run's notes. ``format_version`` changes when the content changes; a manifest without one is read as
version 1.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from .errors import InputImageError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
TOOL = "seguncertainty"


class ManifestError(InputImageError):
    """A manifest is missing, not JSON or not shaped as this module writes it (the message: the problem)."""


def model_record(description) -> dict:
    """The manifest's ``model``: name, version, folder and each weight file's name and sha256."""
    return {"name": description.name, "version": description.version, "folder": str(description.folder),
            "members": [{"file": m.path.name, "sha256": m.sha256} for m in description.members]}


def build_manifest(*, version: str, input_name: str, description, method: str, n_samples: int, device: str,
                   settings: dict, notes: list[str], outputs: list[dict], inference: dict | None = None) -> dict:
    """The manifest of one run. ``version``: the tool's; ``description``: the model's (name, version,
    folder, members, labels); ``outputs``: one entry per file written, {"file", "kind", "meaning", ...};
    ``inference``: the temperature that divided the logits and the CPU threads; card models' backend,
    precision, accuracy guard figure and dropout-mask generator."""
    return {
        "format_version": FORMAT_VERSION,
        "tool": f"{TOOL} {version}",
        "python": platform.python_version(),
        "input": input_name,
        "model": model_record(description),
        "method": method,
        "n_samples": n_samples,
        "device": device,
        **({"inference": inference} if inference is not None else {}),
        "settings": settings,
        "labels": {str(k): v for k, v in description.labels.items()},
        "notes": notes,
        "outputs": outputs,
    }


def parse_manifest(data: object, kinds: bool = True) -> dict:
    """``data`` (decoded JSON) checked as a manifest: an object of a readable ``format_version`` whose
    ``outputs`` is a list of objects, each with a ``kind`` text (``kinds=False``: a file list is enough);
    ManifestError naming the problem otherwise."""
    if not isinstance(data, dict):
        raise ManifestError("it is not a JSON object")
    version = data.get("format_version", 1)
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ManifestError(f"format_version {version!r} is not one this tool reads "
                            f"({', '.join(map(str, READABLE_VERSIONS))})")
    outputs = data.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(e, dict) and (not kinds or isinstance(e.get("kind"), str))
                                                for e in outputs):
        raise ManifestError("'outputs' must be a list of entries with a 'kind'" if kinds
                            else "'outputs' must be a list of entries")
    return data


def read_manifest(folder: str | Path, kinds: bool = True) -> dict:
    """``folder``/manifest.json, parsed and checked (:func:`parse_manifest`); ManifestError otherwise, its
    message the problem without the path (callers name the file). An unreadable file or text that is not
    JSON raises it from the OSError or ValueError (``__cause__``)."""
    path = Path(folder) / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot be read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ManifestError(f"not valid JSON: {exc}") from exc
    return parse_manifest(data, kinds)


def is_plain_name(name: object) -> bool:
    """A file name inside the run folder: text, no folder part, not '.' or '..'."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def written_files(manifest: dict) -> set[str] | None:
    """The files a parsed manifest says this tool wrote (its outputs and itself); None unless its ``tool``
    is this tool and every output names a plain file name."""
    if not str(manifest.get("tool", "")).startswith(f"{TOOL} "):
        return None
    names = [entry.get("file") for entry in manifest["outputs"]]
    if not all(is_plain_name(n) for n in names):
        return None
    return set(names) | {MANIFEST}


def run_files(folder: Path) -> set[str] | None:
    """The file names an earlier segmentation run wrote in ``folder`` (its manifest's outputs and the
    manifest itself), or None when ``folder`` has no readable manifest written by this tool."""
    try:
        return written_files(read_manifest(folder, kinds=False))
    except ManifestError:
        return None
