"""Model formats, recognized from what a path contains, and the checker registered for each.

Formats: "card" (card.json with MONAI state dicts or TorchScript), "nnunet" (nnU-Net v2 trained-model folder:
dataset.json, plans.json and fold_N/), "monai_bundle" (configs/inference.json), "onnx" (*.onnx with a card).
A checker takes the model path and returns a ``ModelSummary`` or raises ModelError; adapters register theirs
with ``register_checker``. Model management (``seguncertainty models``) calls ``check_model``. Needs no torch.
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
FORMATS = (CARD, NNUNET, MONAI_BUNDLE, ONNX)
FORMAT_NAMES = {CARD: "SegUncertainty card", NNUNET: "nnU-Net v2", MONAI_BUNDLE: "MONAI bundle", ONNX: "ONNX"}
#: the module that defines each format's checker (imported on first use, so this module needs no torch)
CHECKER_MODULES = {NNUNET: ".adapters.nnunet", MONAI_BUNDLE: ".adapters.monai_bundle"}
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


Checker = Callable[[Path], ModelSummary]
_CHECKERS: dict[str, Checker] = {}


def register_checker(fmt: str, checker: Checker) -> None:
    """Let ``check_model`` (and so ``models add/check/list``) handle models of format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown model format {fmt!r}; known: {', '.join(FORMATS)}")
    _CHECKERS[fmt] = checker


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


def detect_format(path: str | Path) -> str:
    """"card" | "nnunet" | "monai_bundle" | "onnx" from what ``path`` contains; ModelError if none fits.

    The one definition of format recognition: model management and loading both use it. nnU-Net v2: a
    trained-model folder (dataset.json, plans.json, fold_N/) or a dataset folder holding exactly one.
    MONAI bundle: configs/inference.json (or .yaml). ONNX: a card whose architecture is "onnx" (or a card
    beside .onnx files). Card: card.json (or the path of a card.json file).
    """
    path = Path(path)
    if path.is_file():
        if path.name == CARD_FILENAME:
            path = path.parent
        else:
            raise ModelError(f"{path} is a file; give the model folder (or its {CARD_FILENAME})")
    if not path.is_dir():
        raise ModelError(f"Model path {path} does not exist")
    if nnunet_model_folder(path) is not None:
        return NNUNET
    if bundle_config(path) is not None:
        return MONAI_BUNDLE
    if (path / CARD_FILENAME).exists():
        return ONNX if _card_architecture(path) == ONNX or any(path.glob("*.onnx")) else CARD
    raise ModelError(f"{path} is not a model folder: expected {CARD_FILENAME}, an nnU-Net v2 folder "
                     "(dataset.json, plans.json, fold_N/) or a MONAI bundle (configs/inference.json)")


def check_model(path: str | Path) -> ModelSummary:
    """Detect the format and run its checker; ModelError if the format's support is not installed."""
    fmt = detect_format(path)
    if fmt not in _CHECKERS and fmt in CHECKER_MODULES:
        try:  # the module registers its checker when imported
            importlib.import_module(CHECKER_MODULES[fmt], __package__)
        except ImportError as exc:
            raise ModelError(f"{FORMAT_NAMES[fmt]} support is not installed ({exc}); cannot check or use "
                             f"{path}") from exc
    checker = _CHECKERS.get(fmt)
    if checker is None:
        raise ModelError(f"{FORMAT_NAMES[fmt]} support is not installed or not available in this version; "
                         f"cannot check or use {path}")
    return checker(Path(path))


def summarize_card(path: Path) -> ModelSummary:
    """The card and ONNX formats' checker, without torch: schema, confinement and sha256 of every member."""
    from .card import load_card

    card = load_card(path)
    card.verify()
    files = [CARD_FILENAME, *(m.path.relative_to(card.folder).as_posix() for m in card.members)]
    if (card.folder / "README.md").is_file() and not (card.folder / "README.md").is_symlink():
        files.append("README.md")
    fmt = ONNX if card.architecture["type"] == ONNX else CARD
    return ModelSummary(card.name, fmt, card.modality, card.labels, len(card.members), card.methods,
                        tuple(files), card.version, card.task)


register_checker(CARD, summarize_card)
register_checker(ONNX, summarize_card)  # the networks are checked when loaded (catalog.check_path)
