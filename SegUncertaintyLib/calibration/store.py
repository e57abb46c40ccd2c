"""Calibration files: ``$SEGUNCERTAINTY_HOME/calibrations/<id>.json`` (else ``~/.seguncertainty/calibrations``),
validated by ``calibration.schema.json`` (beside this file), never inside a model's folder.

A calibration holds for one model's weights (every member's sha256, in order), one method and one sample
count as requested (``samples``; null = the method's default) and nothing else: the scores' spread, the
maps and so the threshold and the predicted Dice depend on all three. :func:`select_calibration` applies
that rule: ``auto`` takes the newest matching file, a path is refused (UsageError, exit 2) when it does
not match, ``none`` turns calibration off.

Format versions: 2 adds ``temperature`` (calibration/temperature.py; every later run divides each pass's
logits by its ``value``). Version 1 files stay readable and apply with t = 1 (they hold no temperature).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import write_text_atomic

SCHEMA_PATH = Path(__file__).with_name("calibration.schema.json")
FORMAT_VERSION = 2
AUTO, OFF = "auto", "none"


def calibrations_dir() -> Path:
    """``$SEGUNCERTAINTY_HOME/calibrations`` or ``~/.seguncertainty/calibrations``."""
    home = os.environ.get("SEGUNCERTAINTY_HOME") or Path.home() / ".seguncertainty"
    return Path(home) / "calibrations"


def threshold_to_json(value: float) -> float | str:
    """A threshold as JSON: +inf (flag nothing) and -inf (flag everything) as the strings "+inf" / "-inf"."""
    return value if math.isfinite(value) else ("+inf" if value > 0 else "-inf")


def threshold_from_json(value: float | str) -> float:
    return float(value.replace("+", "")) if isinstance(value, str) else float(value)


def validate(doc: dict, where: str) -> dict:
    """``doc`` if it matches the schema, else UsageError naming ``where`` and the first problem."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise UsageError(f"Calibration {where} is not valid ({at}: {error.message})")
    return doc


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_temperature(doc: dict) -> float:
    """The temperature a run with calibration ``doc`` applies: its fitted t, 1 for a version-1 file."""
    return float(doc.get("temperature", {}).get("value", 1.0))


def calibration_record(doc: dict, path: Path) -> dict:
    """The manifest's and scores.json's ``calibration``: id, sha256 of the file, file path, and the temperature
    applied to every pass's logits (files with one)."""
    return {"id": doc["id"], "sha256": file_sha256(path), "file": str(path),
            **({"temperature": calibration_temperature(doc)} if "temperature" in doc else {})}


def read_calibration(path: str | os.PathLike) -> dict:
    """The validated calibration in ``path``; UsageError when unreadable or invalid."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"Cannot read calibration {path}: {exc}") from exc
    return validate(doc, str(path))


def write_calibration(doc: dict, model_folder: str | os.PathLike | None = None) -> Path:
    """Validate ``doc`` and write it as ``calibrations_dir()/<id>.json``; UsageError if that folder lies
    inside ``model_folder`` (a bundled model's folder is never written to)."""
    validate(doc, doc.get("id", "(new)"))
    folder = calibrations_dir()
    if model_folder is not None and folder.resolve().is_relative_to(Path(model_folder).resolve()):
        raise UsageError(f"Calibrations folder {folder} lies inside the model's folder; set SEGUNCERTAINTY_HOME")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['id']}.json"
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return path


def list_calibrations() -> list[tuple[Path, dict]]:
    """Every valid calibration file, newest first (invalid files are left out)."""
    found = []
    folder = calibrations_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append((path, read_calibration(path)))
        except UsageError:
            continue
    return sorted(found, key=lambda item: item[1]["created"], reverse=True)


def mismatch(doc: dict, weights: list[str], method: str, samples: int | None) -> str | None:
    """Why ``doc`` does not hold for a run of these weights (sha256s), method and requested samples; None
    when it does."""
    if doc["model"]["weights"] != list(weights):
        return f"it was made for other weights ({doc['model']['name']} {doc['model']['version']})"
    if doc["method"] != method:
        return f"it was made for method {doc['method']}, this run uses {method}"
    if doc["samples"] != samples:
        return f"it was made with --samples {doc['samples']}, this run uses --samples {samples}"
    return None


def select_calibration(choice: str, weights: list[str], method: str, samples: int | None
                       ) -> tuple[dict, Path] | None:
    """The calibration a run applies: ``none`` -> None; ``auto`` -> the newest file that holds for these
    weights, method and samples, or None; a path -> that file, UsageError when it does not hold."""
    if choice == OFF:
        return None
    if choice == AUTO:
        return next(((doc, path) for path, doc in list_calibrations()
                     if mismatch(doc, weights, method, samples) is None), None)
    doc = read_calibration(choice)
    reason = mismatch(doc, weights, method, samples)
    if reason is not None:
        raise UsageError(f"Calibration {choice} not applied: {reason}; a calibration holds only for the weights, "
                         "method and sample count it was made with")
    return doc, Path(choice)
