"""Model formats, recognized from what a path contains, and the checker registered for each.

Formats: "card" (card.json with MONAI state dicts or TorchScript), "nnunet" (nnU-Net v2 trained-model folder:
dataset.json, plans.json and fold_N/), "monai_bundle" (configs/inference.json), "onnx" (*.onnx with a card).
A checker takes the model path and returns a ``ModelSummary`` or raises ModelError; adapters register theirs
with ``register_checker``. Model management (``seguncertainty models``) calls ``check_model``. Needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from .card import CARD_FILENAME

FORMATS = ("card", "nnunet", "monai_bundle", "onnx")
FORMAT_NAMES = {"card": "SegUncertainty card", "nnunet": "nnU-Net v2", "monai_bundle": "MONAI bundle",
                "onnx": "ONNX"}


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


def detect_format(path: str | Path) -> str:
    """"card" | "nnunet" | "monai_bundle" | "onnx" from what ``path`` contains; ModelError if none fits."""
    path = Path(path)
    if path.is_file():
        if path.name == CARD_FILENAME:
            path = path.parent
        else:
            raise ModelError(f"{path} is a file; give the model folder (or its {CARD_FILENAME})")
    if not path.is_dir():
        raise ModelError(f"Model path {path} does not exist")
    if (path / "dataset.json").is_file() and (path / "plans.json").is_file() and any(path.glob("fold_*")):
        return "nnunet"
    if (path / "configs" / "inference.json").is_file():
        return "monai_bundle"
    if (path / CARD_FILENAME).exists():
        return "onnx" if any(path.glob("*.onnx")) else "card"
    raise ModelError(f"{path} is not a model folder: expected {CARD_FILENAME}, an nnU-Net v2 folder "
                     "(dataset.json, plans.json, fold_N/) or a MONAI bundle (configs/inference.json)")


def check_model(path: str | Path) -> ModelSummary:
    """Detect the format and run its checker; ModelError if the format has no checker here."""
    fmt = detect_format(path)
    checker = _CHECKERS.get(fmt)
    if checker is None:
        raise ModelError(f"{FORMAT_NAMES[fmt]} support is not installed or not available in this version; "
                         f"cannot check or use {path}")
    return checker(Path(path))


def summarize_card(path: Path) -> ModelSummary:
    """The card format's checker, without torch: schema, confinement and sha256 of every member."""
    from .card import load_card

    card = load_card(path)
    card.verify()
    files = [CARD_FILENAME, *(m.path.relative_to(card.folder).as_posix() for m in card.members)]
    if (card.folder / "README.md").is_file() and not (card.folder / "README.md").is_symlink():
        files.append("README.md")
    return ModelSummary(card.name, "card", card.modality, card.labels, len(card.members), card.methods,
                        tuple(files), card.version, card.task)


register_checker("card", summarize_card)
