"""The model catalog: bundled models and those installed for this user. Needs no torch (for Slicer's GUI)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from .card import load_card

BUNDLED_DIR = Path(__file__).parent / "bundled"
DEFAULT_MODEL = "brainmask-t1"


def user_model_dir() -> Path:
    """Where installed models live: ``$SEGUNCERTAINTY_HOME/models`` or ``~/.seguncertainty/models``."""
    home = os.environ.get("SEGUNCERTAINTY_HOME") or Path.home() / ".seguncertainty"
    return Path(home) / "models"


def available_models() -> dict[str, Path]:
    """Model name -> card folder, for the bundled models and those installed for this user."""
    found: dict[str, Path] = {}
    for root in (BUNDLED_DIR, user_model_dir()):
        if root.is_dir():
            for card in sorted(root.glob("*/card.json")):
                try:
                    found.setdefault(load_card(card).name, card.parent)
                except ModelError:
                    continue
    return found
