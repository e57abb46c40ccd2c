"""The card and ONNX formats: a card.json that pins every member's weight file by sha256.

``check`` needs no torch (schema, confinement and sha256 of every member; the networks are checked when
loaded). ``load`` builds the networks with the loader's card path (models/loader.py).
"""

from __future__ import annotations

from pathlib import Path

from ..card import CARD_FILENAME, load_card
from ..registry import CARD, ONNX, ModelSummary


def check(path: Path) -> ModelSummary:
    """The card's summary after checking it and the sha256 of every member; ModelError otherwise."""
    card = load_card(path)
    card.verify()
    files = [CARD_FILENAME, *(m.path.relative_to(card.folder).as_posix() for m in card.members)]
    if (card.folder / "README.md").is_file() and not (card.folder / "README.md").is_symlink():
        files.append("README.md")
    fmt = ONNX if card.architecture["type"] == ONNX else CARD
    return ModelSummary(card.name, fmt, card.modality, card.labels, len(card.members), card.methods,
                        tuple(files), card.version, card.task)


def load(path: Path, name: str | None = None):
    """The verified card's networks, checked against the model contract (loader.LoadedModel)."""
    from ..loader import load_card_model

    return load_card_model(path, name)
