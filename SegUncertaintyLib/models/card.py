"""Model cards: the JSON that describes a model and pins the sha256 of every weight file.

A card lives in a folder next to its weight files::

    {
      "name": "brainmask-t1", "version": "1.0.0", "task": "brain extraction",
      "modality": "MR T1", "labels": {"0": "background", "1": "brain"},
      "preprocessing": {"spacing_mm": [3, 3, 3], "orientation": "RAS",
                        "intensity": {"method": "percentile", "lower": 0.5, "upper": 99.5}},
      "patch_size": [64, 64, 64],
      "methods": ["softmax", "mc_dropout", "ensemble", "tta"],
      "architecture": {"type": "monai", "name": "UNet", "kwargs": {...}},   # or {"type": "torchscript"}
      "members": [{"file": "member0.pt", "sha256": "..."}, ...],
      "intended_use": "...", "limitations": "...", "training_data": "...", "license": "..."
    }

Several members form a deep ensemble.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ChecksumError, ModelError

CARD_FILENAME = "card.json"
KNOWN_METHODS = ("softmax", "mc_dropout", "ensemble", "tta")
INTENSITY_METHODS = ("percentile", "zscore", "window", "none")


@dataclass(frozen=True)
class Member:
    """One network of a model: a weight file and its expected sha256."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """Parsed model card. ``folder`` is where the card and its weight files live."""

    name: str
    version: str
    task: str
    modality: str
    labels: dict[int, str]
    spacing_mm: tuple[float, float, float]
    orientation: str
    intensity: dict
    patch_size: tuple[int, int, int]
    methods: tuple[str, ...]
    architecture: dict
    members: tuple[Member, ...]
    folder: Path
    info: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def verify(self) -> None:
        """Check every weight file exists and matches its sha256; raise ChecksumError otherwise."""
        for member in self.members:
            if not member.path.is_file():
                raise ModelError(f"Model '{self.name}': weight file missing: {member.path}")
            actual = sha256_file(member.path)
            if actual != member.sha256.lower():
                raise ChecksumError(
                    f"Model '{self.name}': checksum mismatch for {member.path.name} "
                    f"(card says sha256 {member.sha256[:12]}…, file has {actual[:12]}…). "
                    "The file is corrupt or was replaced; reinstall the model."
                )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _require(data: dict, key: str, source: Path):
    if key not in data:
        raise ModelError(f"Model card {source} lacks the required field '{key}'")
    return data[key]


def _triple(value, key: str, source: Path, kind=float) -> tuple:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3 or any(float(v) <= 0 for v in value):
        raise ModelError(f"Model card {source}: '{key}' must be three positive numbers, got {value!r}")
    return tuple(kind(v) for v in value)


def load_card(path: str | Path) -> ModelCard:
    """Parse a card from a card file or a folder holding ``card.json``; raise ModelError if invalid."""
    path = Path(path)
    card_path = path / CARD_FILENAME if path.is_dir() else path
    if not card_path.is_file():
        raise ModelError(f"No model card found at {card_path}")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"Model card {card_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"Model card {card_path} must be a JSON object")

    labels_raw = _require(data, "labels", card_path)
    try:
        labels = {int(k): str(v) for k, v in labels_raw.items()}
    except (AttributeError, ValueError) as exc:
        raise ModelError(f"Model card {card_path}: 'labels' must map integers to names") from exc
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise ModelError(f"Model card {card_path}: labels must be 0..C-1 with C >= 2, got {sorted(labels)}")

    pre = _require(data, "preprocessing", card_path)
    intensity = dict(pre.get("intensity", {"method": "none"}))
    if intensity.get("method") not in INTENSITY_METHODS:
        raise ModelError(
            f"Model card {card_path}: intensity method must be one of {INTENSITY_METHODS}, "
            f"got {intensity.get('method')!r}"
        )
    methods = tuple(data.get("methods", ["softmax"]))
    unknown = set(methods) - set(KNOWN_METHODS)
    if unknown:
        raise ModelError(f"Model card {card_path}: unknown methods {sorted(unknown)}; known: {KNOWN_METHODS}")

    arch = _require(data, "architecture", card_path)
    if arch.get("type") not in ("monai", "torchscript"):
        raise ModelError(f"Model card {card_path}: architecture type must be 'monai' or 'torchscript'")
    members_raw = _require(data, "members", card_path)
    if not members_raw:
        raise ModelError(f"Model card {card_path}: 'members' lists no weight file")
    members = tuple(
        Member(card_path.parent / _require(m, "file", card_path), str(_require(m, "sha256", card_path)))
        for m in members_raw
    )
    known = {"name", "version", "task", "modality", "labels", "preprocessing", "patch_size", "methods",
             "architecture", "members"}
    return ModelCard(
        name=str(_require(data, "name", card_path)),
        version=str(data.get("version", "0")),
        task=str(data.get("task", "")),
        modality=str(data.get("modality", "")),
        labels=labels,
        spacing_mm=_triple(_require(pre, "spacing_mm", card_path), "spacing_mm", card_path),
        orientation=str(pre.get("orientation", "RAS")).upper(),
        intensity=intensity,
        patch_size=_triple(_require(data, "patch_size", card_path), "patch_size", card_path, int),
        methods=methods,
        architecture=dict(arch),
        members=members,
        folder=card_path.parent,
        info={k: v for k, v in data.items() if k not in known},
    )


def write_card(data: dict, folder: str | Path) -> Path:
    """Write ``data`` as ``folder/card.json`` after filling each member's sha256 from its file."""
    folder = Path(folder)
    data = json.loads(json.dumps(data))
    for member in data["members"]:
        member["sha256"] = sha256_file(folder / member["file"])
    path = folder / CARD_FILENAME
    path.write_text(json.dumps(data, indent=2) + "\n")
    load_card(path)  # refuse to leave an invalid card behind
    return path
