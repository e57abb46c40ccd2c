"""Model management: check a model folder and install it for this user (``seguncertainty models add``).

Above the catalog and the loader: a deep check loads the model as segmenting would.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import ModelError
from ..core.files import sha256_file
from .card import CARD_FILENAME, confined_file, load_card
from .catalog import check_name, list_models, read_installed, user_model_dir, write_installed
from .loader import check_mc_dropout, every_check_run, load_model
from .registry import ModelSummary, check_model, format_named


def check_path(path: str | Path, deep: bool = True) -> ModelSummary:
    """Check a model folder of any registered format; ``deep`` also loads card models' networks and checks
    them against the model contract (outputs, and active dropout if the card lists mc_dropout), every check
    run afresh and none remembered."""
    summary = check_model(path)
    if deep and format_named(summary.format).has_card:
        with every_check_run():
            model = load_model(path)
            if "mc_dropout" in model.card.methods:
                check_mc_dropout(model, range(len(model.networks)))
    return summary


def add_model(path: str | Path, name: str | None = None) -> tuple[str, Path]:
    """Check the model at ``path``, copy its files into the user's model folder with their sha256 recorded,
    and register it. Returns (name, installed folder). Nothing is written unless every check passes."""
    source = Path(path)
    summary = check_path(source, deep=True)
    if name is None:
        name = summary.name if format_named(summary.format).has_card else _default_name(summary.name, source)
    name = check_name(name)
    root = user_model_dir()
    entries = list_models()
    taken = {e.name for e in entries} | {e.folder.name for e in entries if e.source == "user"}
    if name in taken:
        raise ModelError(f"A model named '{name}' is already installed; choose another --name or remove it first")
    registry = read_installed(root)
    if not format_named(summary.format).has_card and not summary.files:
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
        if format_named(summary.format).has_card:
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
    write_installed(root, registry)
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
