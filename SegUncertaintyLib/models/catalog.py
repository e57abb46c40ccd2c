"""The model catalog: bundled models and those installed for this user; ``add`` and ``remove``.

Needs no torch, except ``check_path(deep=True)`` (and so ``add_model``), which loads the networks.
A broken model in the user's folder is listed with its reason; it never hides the others.
``installed.json`` in the user's model folder records what ``add_model`` created (files and sha256),
and ``remove_model`` removes exactly that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import ModelError
from ..core.vocabulary import DEFAULT_MODEL  # noqa: F401 (re-exported)
from .card import CARD_FILENAME, SchemaUnavailableError, card_schema, confined_file, load_card, sha256_file
from .formats import CARD, ONNX, ModelSummary, check_model, detect_format

BUNDLED_DIR = Path(__file__).parent / "bundled"
REGISTRY = "installed.json"


def user_model_dir() -> Path:
    """Where installed models live: ``$SEGUNCERTAINTY_HOME/models`` or ``~/.seguncertainty/models``."""
    home = os.environ.get("SEGUNCERTAINTY_HOME") or Path.home() / ".seguncertainty"
    return Path(home) / "models"


@dataclass(frozen=True)
class CatalogEntry:
    """One model folder: its summary when it is usable, else the reason it is not."""

    name: str
    folder: Path
    source: str  # "bundled" or "user"
    format: str | None
    summary: ModelSummary | None
    error: str | None = None

    def as_dict(self) -> dict:
        s = self.summary
        return {"name": self.name, "format": self.format, "source": self.source, "folder": str(self.folder),
                "status": "ok" if self.error is None else "broken", "reason": self.error,
                "version": s.version if s else None, "modality": s.modality if s else None,
                "labels": {str(k): v for k, v in s.labels.items()} if s else None,
                "members": s.members if s else None, "methods": list(s.methods) if s else None}


def summarize(folder: Path, verify: bool = False) -> ModelSummary:
    """A model's summary; for cards without hashing the weights unless ``verify``."""
    fmt = detect_format(folder)
    if fmt in (CARD, ONNX) and not verify:
        card = load_card(folder)
        return ModelSummary(card.name, fmt, card.modality, card.labels, len(card.members), card.methods,
                            version=card.version, task=card.task)
    return check_model(folder)


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _recorded(folder: Path, hashes: bool) -> ModelSummary | None:
    """The summary ``add_model`` recorded for ``folder`` (None if it recorded none), after checking that
    every recorded file is there with its recorded size (and sha256 if ``hashes``); ModelError otherwise."""
    entry = next((e for e in _registry(folder.parent)["models"].values() if e.get("folder") == folder.name), None)
    if entry is None:
        return None
    sizes = entry.get("sizes", {})
    for rel, digest in entry.get("files", {}).items():
        path = confined_file(folder, rel)
        if not path.is_file() or path.stat().st_size != sizes.get(rel, path.stat().st_size) or (
                hashes and sha256_file(path) != digest):
            raise ModelError(f"Installed model {folder.name}: {rel} is missing or changed since 'models add' "
                             f"({'sha256' if hashes else 'size'} differs)")
    s = entry.get("summary")
    if not isinstance(s, dict):
        return None
    return ModelSummary(s["name"], s["format"], s["modality"], {int(k): v for k, v in s["labels"].items()},
                        s["members"], tuple(s["methods"]), tuple(entry["files"]), s["version"], s["task"])


def list_models(verify: bool = False) -> list[CatalogEntry]:
    """Every bundled and user model folder, usable or not (bundled first, then by folder name).

    A user model of a format without a card (nnU-Net, MONAI bundle) is named by its folder, the name
    ``models add`` installed it under, and listed from what ``models add`` recorded once its files are there
    with their recorded sizes (loading it is slow); ``verify`` loads every model and checks the recorded
    sha256."""
    entries = []
    for source, root in (("bundled", BUNDLED_DIR), ("user", user_model_dir())):
        for folder in _folders(root):
            fmt = None
            try:
                fmt = detect_format(folder)
                recorded = _recorded(folder, verify) if source == "user" else None
                # nnU-Net and bundle models are loaded (slow) only by --verify; else add's record is used
                fast = recorded is not None and not verify and fmt not in (CARD, ONNX)
                summary = recorded if fast else summarize(folder, verify)
                name = summary.name if fmt in (CARD, ONNX) or source == "bundled" else folder.name
                entries.append(CatalogEntry(name, folder, source, fmt, summary))
            except Exception as exc:  # a third-party checker may raise anything: list the model as broken
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                entries.append(CatalogEntry(folder.name, folder, source, fmt, None, reason))
    return entries


def model_folder(name: str) -> Path | None:
    """The folder of the usable model ``name``, of any format (bundled first: a user model cannot shadow it)."""
    return next((e.folder for e in list_models() if e.error is None and e.name == name), None)


def available_models() -> dict[str, Path]:
    """Model name -> card folder of every usable card (or ONNX card) model (bundled first: a user model
    cannot shadow it)."""
    found: dict[str, Path] = {}
    for entry in list_models():
        if entry.error is None and entry.format in (CARD, ONNX):
            found.setdefault(entry.name, entry.folder)
        elif entry.source == "bundled" and (entry.folder / CARD_FILENAME).is_file() and _schema_missing():
            # before Slicer has installed jsonschema: still offer the bundled model (loading it checks it)
            card = json.loads((entry.folder / CARD_FILENAME).read_text(encoding="utf-8"))
            found.setdefault(card["name"], entry.folder)
    return found


def _schema_missing() -> bool:
    try:
        from .card import _validator

        _validator()
    except SchemaUnavailableError:
        return True
    return False


# -- management ------------------------------------------------------------------------------------------
def check_path(path: str | Path, deep: bool = True) -> ModelSummary:
    """Check a model folder of any registered format; ``deep`` also loads card models' networks and checks
    them against the model contract (outputs, and active dropout if the card lists mc_dropout)."""
    summary = check_model(path)
    if deep and summary.format in (CARD, ONNX):
        from .loader import check_mc_dropout, load_model

        model = load_model(path)
        if "mc_dropout" in model.card.methods:
            check_mc_dropout(model, range(len(model.networks)))
    return summary


def check_name(name: str) -> str:
    """``name`` if it is a valid model name (the card schema's pattern), else ValueError (a usage error)."""
    pattern = card_schema()["properties"]["name"]["pattern"]
    if not re.fullmatch(pattern, name):
        raise ValueError(f"model name {name!r} is invalid: expected 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def _registry(root: Path) -> dict:
    path = root / REGISTRY
    if not path.is_file():
        return {"models": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            return data
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    raise ModelError(f"{path} is not a valid registry of added models; fix or delete it")


def _write_registry(root: Path, data: dict) -> None:
    tmp = root / f".{REGISTRY}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / REGISTRY)


def add_model(path: str | Path, name: str | None = None) -> tuple[str, Path]:
    """Check the model at ``path``, copy its files into the user's model folder with their sha256 recorded,
    and register it. Returns (name, installed folder). Nothing is written unless every check passes."""
    source = Path(path)
    summary = check_path(source, deep=True)
    if name is None:
        name = summary.name if summary.format in (CARD, ONNX) else _default_name(summary.name, source)
    name = check_name(name)
    root = user_model_dir()
    entries = list_models()
    taken = {e.name for e in entries} | {e.folder.name for e in entries if e.source == "user"}
    if name in taken:
        raise ModelError(f"A model named '{name}' is already installed; choose another --name or remove it first")
    registry = _registry(root)
    if summary.format not in (CARD, ONNX) and not summary.files:
        raise ModelError(f"The {summary.format} checker names no files to copy for {source}")
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".adding-{name}-{os.getpid()}"
    try:
        staging.mkdir()
        hashes = {}
        for rel in summary.files:
            src = confined_file(source, rel)
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            hashes[rel] = sha256_file(dst)
            if hashes[rel] != sha256_file(src):
                raise ModelError(f"{source / rel} changed while it was being copied; try again")
        if summary.format in (CARD, ONNX):
            if name != summary.name:  # the copy carries the name it is installed under
                card_path = staging / CARD_FILENAME
                data = json.loads(card_path.read_text(encoding="utf-8"))
                data["name"] = name
                card_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
                hashes[CARD_FILENAME] = sha256_file(card_path)
            load_card(staging).verify()  # the copies match the card's sha256
        destination = root / name
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        raise
    recorded = {"name": summary.name, "format": summary.format, "modality": summary.modality,
                "labels": {str(k): v for k, v in summary.labels.items()}, "members": summary.members,
                "methods": list(summary.methods), "version": summary.version, "task": summary.task}
    registry["models"][name] = {"folder": name, "format": summary.format, "source": str(source.resolve()),
                                "files": hashes, "sizes": {rel: (destination / rel).stat().st_size for rel in hashes},
                                "summary": recorded, "added": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_registry(root, registry)
    return name, destination


def _default_name(model_name: str, source: Path) -> str:
    """The install name of a model without a card: its own name if valid, else its folder's name."""
    for candidate in (model_name, source.resolve().name):
        try:
            return check_name(candidate)
        except ValueError:
            continue
    raise ValueError(f"neither the model's name {model_name!r} nor its folder's name is a valid model name; "
                     "give one with --name")


def remove_model(name: str) -> tuple[Path, list[str]]:
    """Remove a model that ``add_model`` installed: exactly the files it recorded.

    Returns the folder and the names of what was left in it (files the user put there are kept)."""
    root = user_model_dir()
    registry = _registry(root)
    entry = registry["models"].get(name)
    if entry is None:
        if (BUNDLED_DIR / name).exists() or name in {e.name for e in list_models() if e.source == "bundled"}:
            raise ModelError(f"'{name}' is a bundled model; it cannot be removed")
        if any(e.name == name or e.folder.name == name for e in list_models() if e.source == "user"):
            raise ModelError(f"'{name}' was not installed by 'seguncertainty models add'; remove its folder "
                             f"in {root} by hand")
        raise ModelError(f"No installed model named '{name}'")
    folder = root / entry["folder"]
    if folder.is_symlink() or not folder.is_dir() or folder.resolve().parent != root.resolve():
        raise ModelError(f"Installed model '{name}': {folder} is not the folder 'models add' created; "
                         "remove it by hand")
    for rel in entry["files"]:
        target = confined_file(folder, rel)
        if target.is_file():
            target.unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    left = sorted(p.name for p in folder.iterdir())
    if not left:
        folder.rmdir()
    del registry["models"][name]
    _write_registry(root, registry)
    return folder, left
