"""Model formats: one record each, recognized from what a path contains, checked and loaded by its adapter.

Formats: "nnunet" (nnU-Net v2 trained-model folder: dataset.json, plans.json and fold_N/), "monai_bundle"
(configs/inference.json), "onnx" (*.onnx with a card), "card" (card.json with MONAI state dicts or
TorchScript). Each record names the adapter module that implements it; the module is imported on first
use (so this module needs no torch) and defines ``check(path) -> ModelSummary`` (what model management
shows and copies; ModelError if unusable) and ``load(path, name) -> model`` (the model, described under
``name``). Adding a format takes one adapter module and one line in :data:`MODEL_FORMATS`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ModelError
from .card import CARD_FILENAME

CARD, NNUNET, MONAI_BUNDLE, ONNX = "card", "nnunet", "monai_bundle", "onnx"
BUNDLE_CONFIGS = tuple(f"inference.{ext}" for ext in ("json", "yaml", "yml"))


@dataclass(frozen=True)
class ModelSummary:
    """What management shows and copies: ``files`` are paths relative to the model folder (each is copied)."""

    name: str
    format: str
    modality: str
    labels: dict[int, str]
    members: int
    methods: tuple[str, ...]
    files: tuple[str, ...] = ()
    version: str = ""
    task: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFormat:
    """One model format. ``detect(folder)``: whether a model folder holds this format; ``module``: its
    adapter module (relative to this package, or absolute); ``has_card``: its name and files come from a
    card.json (a model without one is named by the folder it is installed in)."""

    name: str
    label: str
    module: str
    detect: Callable[[Path], bool]
    has_card: bool = False

    def adapter(self, path: str | Path | None = None):
        """The adapter module; ModelError when the format's support is not installed."""
        try:
            return importlib.import_module(self.module, __package__)
        except ImportError as exc:
            where = f"; cannot check or use {path}" if path is not None else ""
            raise ModelError(f"{self.label} support is not installed ({exc}){where}") from exc

    def check(self, path: str | Path) -> ModelSummary:
        """The adapter's check of the model at ``path``: its summary, or ModelError."""
        return self.adapter(path).check(Path(path))

    def load(self, path: str | Path, name: str | None = None):
        """The adapter's model at ``path``, described under ``name`` (None: the model's own name)."""
        return self.adapter(path).load(Path(path), name)


def _is_nnunet_folder(path: Path) -> bool:
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file() and any(
        p.is_dir() for p in path.glob("fold_*"))


def nnunet_model_folder(path: Path) -> Path | None:
    """The nnU-Net v2 trained-model folder ``path`` is, or the single one directly inside it (a dataset folder)."""
    if _is_nnunet_folder(path):
        return path
    inside = [p for p in sorted(path.iterdir()) if p.is_dir() and _is_nnunet_folder(p)] if path.is_dir() else []
    return inside[0] if len(inside) == 1 else None


def bundle_config(path: Path) -> Path | None:
    """A MONAI bundle's configs/inference.{json,yaml,yml}, or None."""
    return next((path / "configs" / n for n in BUNDLE_CONFIGS if (path / "configs" / n).is_file()), None)


def _card_architecture(folder: Path) -> str | None:
    """The card's architecture type, or None when the card cannot be read (its checker then says why)."""
    try:
        data = json.loads((folder / CARD_FILENAME).read_text(encoding="utf-8"))
        return str(data["architecture"]["type"])
    except Exception:  # noqa: BLE001 - any unreadable card is reported by the card checker
        return None


def _is_onnx(folder: Path) -> bool:
    """A card whose architecture is "onnx", or a card beside .onnx files."""
    return (folder / CARD_FILENAME).exists() and (_card_architecture(folder) == ONNX or any(folder.glob("*.onnx")))


#: every format, in the order they are tried: the first whose ``detect`` accepts a folder is its format
MODEL_FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat(NNUNET, "nnU-Net v2", ".adapters.nnunet", lambda p: nnunet_model_folder(p) is not None),
    ModelFormat(MONAI_BUNDLE, "MONAI bundle", ".adapters.monai_bundle", lambda p: bundle_config(p) is not None),
    ModelFormat(ONNX, "ONNX", ".adapters.cards", _is_onnx, has_card=True),
    ModelFormat(CARD, "SegUncertainty card", ".adapters.cards", lambda p: (p / CARD_FILENAME).exists(), has_card=True),
)


def format_named(name: str) -> ModelFormat:
    """The record of format ``name``; ModelError for an unknown name."""
    found = next((f for f in MODEL_FORMATS if f.name == name), None)
    if found is None:
        raise ModelError(f"Unknown model format {name!r}; known: {', '.join(f.name for f in MODEL_FORMATS)}")
    return found


def format_label(name: str | None) -> str:
    """A format's readable name (the name itself for an unknown one)."""
    return next((f.label for f in MODEL_FORMATS if f.name == name), str(name))


def model_format(path: str | Path) -> ModelFormat:
    """The format of the model at ``path`` (a folder, or its card.json); ModelError if none fits.

    The one definition of format recognition: model management and loading both use it. nnU-Net v2: a
    trained-model folder (dataset.json, plans.json, fold_N/) or a dataset folder holding exactly one.
    MONAI bundle: configs/inference.json (or .yaml). ONNX: a card whose architecture is "onnx" (or a card
    beside .onnx files). Card: card.json.
    """
    path = Path(path)
    if path.is_file():
        if path.name == CARD_FILENAME:
            path = path.parent
        else:
            raise ModelError(f"{path} is a file; give the model folder (or its {CARD_FILENAME})")
    if not path.is_dir():
        raise ModelError(f"Model path {path} does not exist")
    found = next((f for f in MODEL_FORMATS if f.detect(path)), None)
    if found is None:
        raise ModelError(f"{path} is not a model folder: expected {CARD_FILENAME}, an nnU-Net v2 folder "
                         "(dataset.json, plans.json, fold_N/) or a MONAI bundle (configs/inference.json)")
    return found


def detect_format(path: str | Path) -> str:
    """The name of the format of the model at ``path`` (see :func:`model_format`)."""
    return model_format(path).name


def check_model(path: str | Path) -> ModelSummary:
    """Detect the format and run its adapter's check; ModelError if the format's support is not installed."""
    return model_format(path).check(path)
