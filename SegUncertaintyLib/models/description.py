"""What every loaded model says about itself, whatever its format: names, labels, methods, members."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .card import Member, ModelCard


@dataclass(frozen=True)
class ModelDescription:
    """A model as the outputs and the manifest name it. ``labels``: class index 0..C-1 -> name; ``methods``:
    what the model can do; ``members``: its weight files (ensemble members, nnU-Net folds); ``info``: the
    format's own facts (a card's extra fields, nnU-Net's folds and spacing, ...)."""

    name: str
    version: str
    task: str
    modality: str
    labels: dict[int, str]
    methods: tuple[str, ...]
    format: str
    folder: Path
    members: tuple[Member, ...]
    info: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def describe_card(card: ModelCard) -> ModelDescription:
    """The description of a card model ("onnx" when its architecture is an ONNX graph, else "card")."""
    fmt = "onnx" if card.architecture["type"] == "onnx" else "card"
    return ModelDescription(card.name, card.version, card.task, card.modality, card.labels, card.methods, fmt,
                            card.folder, card.members, card.info)
