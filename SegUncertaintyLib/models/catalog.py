"""The model catalog: bundled models and those installed for this user; ``remove``.

Needs no torch (listing with ``verify`` loads whole-volume models with their adapters). A broken model
in the user's folder is listed with its reason; it never hides the others. ``installed.json`` in the
user's model folder records what ``manage.add_model`` created (files and sha256), and ``remove_model``
removes exactly that.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import ModelError
from ..core.files import sha256_file
from ..core.methods import plan_samples
from ..core.vocabulary import DEFAULT_MODEL  # noqa: F401 (re-exported)
from .card import CARD_FILENAME, ModelCard, SchemaUnavailableError, card_schema, confined_file, load_card
from .registry import ModelSummary, format_named, model_format

BUNDLED_DIR = Path(__file__).parent / "bundled"
REGISTRY = "installed.json"


def home_dir() -> Path:
    """The user's folder: ``$SEGUNCERTAINTY_HOME`` or ``~/.seguncertainty``."""
    return Path(os.environ.get("SEGUNCERTAINTY_HOME") or Path.home() / ".seguncertainty")


def user_model_dir() -> Path:
    """Where installed models live: ``$SEGUNCERTAINTY_HOME/models`` or ``~/.seguncertainty/models``."""
    return home_dir() / "models"


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
    fmt = model_format(folder)
    if fmt.has_card and not verify:
        card = load_card(folder)
        return ModelSummary(card.name, fmt.name, card.modality, card.labels, len(card.members), card.methods,
                            version=card.version, task=card.task)
    return fmt.check(folder)


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _recorded(folder: Path, hashes: bool) -> ModelSummary | None:
    """The summary ``add_model`` recorded for ``folder`` (None if it recorded none), after checking that
    every recorded file is there with its recorded size (and sha256 if ``hashes``); ModelError otherwise."""
    entry = next((e for e in read_installed(folder.parent)["models"].values() if e.get("folder") == folder.name), None)
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
                fmt = model_format(folder).name
                has_card = format_named(fmt).has_card
                recorded = _recorded(folder, verify) if source == "user" else None
                # models without a card are loaded (slow) only by --verify; else add's record is used
                fast = recorded is not None and not verify and not has_card
                summary = recorded if fast else summarize(folder, verify)
                name = summary.name if has_card or source == "bundled" else folder.name
                entries.append(CatalogEntry(name, folder, source, fmt, summary))
            except Exception as exc:  # a third-party checker may raise anything: list the model as broken
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                entries.append(CatalogEntry(folder.name, folder, source, fmt, None, reason))
    return entries


def usable_models(entries: list[CatalogEntry] | None = None) -> dict[str, CatalogEntry]:
    """Name -> entry of every usable model of any format among ``entries`` (None: :func:`list_models`),
    bundled first: a user model cannot shadow it."""
    found: dict[str, CatalogEntry] = {}
    for entry in list_models() if entries is None else entries:
        if entry.error is None:
            found.setdefault(entry.name, entry)
        elif entry.source == "bundled" and (entry.folder / CARD_FILENAME).is_file() and _schema_missing():
            # before Slicer has installed jsonschema: still offer the bundled model (loading it checks it)
            card = json.loads((entry.folder / CARD_FILENAME).read_text(encoding="utf-8"))
            found.setdefault(card["name"], replace(entry, name=card["name"]))
    return found


def available_models() -> dict[str, Path]:
    """Model name -> card folder of every usable card (or ONNX card) model (bundled first: a user model
    cannot shadow it)."""
    return {name: e.folder for name, e in usable_models().items() if format_named(e.format).has_card}


def _schema_missing() -> bool:
    try:
        from .card import _validator

        _validator()
    except SchemaUnavailableError:
        return True
    return False


# -- management -----------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    """``name`` if it is a valid model name (the card schema's pattern), else ValueError (a usage error)."""
    pattern = card_schema()["properties"]["name"]["pattern"]
    if not re.fullmatch(pattern, name):
        raise ValueError(f"model name {name!r} is invalid: expected 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def read_installed(root: Path) -> dict:
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


def write_installed(root: Path, data: dict) -> None:
    tmp = root / f".{REGISTRY}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / REGISTRY)


def remove_model(name: str) -> tuple[Path, list[str]]:
    """Remove a model that ``add_model`` installed: exactly the files it recorded.

    Returns the folder and the names of what was left in it (files the user put there are kept)."""
    root = user_model_dir()
    registry = read_installed(root)
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
    write_installed(root, registry)
    return folder, left


def find_card(name_or_path: str | os.PathLike) -> ModelCard | None:
    """The card of the card model at a path or of that name, read without loading weights (torch-free);
    None for another format or an unknown name (loading reports those). ModelError for an invalid card."""
    path = Path(name_or_path)
    if path.is_file():
        return load_card(path)
    if path.exists():
        return load_card(path) if model_format(path).has_card else None
    folder = available_models().get(str(name_or_path))
    return load_card(folder) if folder is not None else None


def check_card_plan(name_or_path: str | os.PathLike, method: str, samples: int | None) -> ModelCard | None:
    """Refuse, before any weights are loaded, a sample plan a card model cannot run: a sample count it
    cannot use, e.g. more TTA samples than its declared flips give (UsageError, exit 2), or an ensemble of
    one member (ModelError, exit 4). Whether the model can do the method at all is checked when it loads,
    with the format's reason; other formats are checked when they load. Returns the card (None: another
    format)."""
    card = find_card(name_or_path)
    if card is not None:
        plan_samples(method, len(card.members), samples, card.flip_axes)
    return card
