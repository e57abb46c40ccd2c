"""Model cards: the JSON that describes a model and pins the sha256 of every weight file.

A card is untrusted data. ``card.schema.json`` (beside this file) is its contract: every card is
validated against it (jsonschema), then checked for what a schema cannot say (labels 0..C-1, the
network's channel counts, lower < upper, member files confined to the model folder, no symlinks).
Every problem is one ``ModelError`` naming the field and what is expected. Needs no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..core.errors import ChecksumError, ModelError
from ..core.files import sha256_file

CARD_FILENAME = "card.json"
SCHEMA_PATH = Path(__file__).with_name("card.schema.json")
#: the anatomical axes, each named by its two orientation letters (also the names of the declared TTA flips)
ANATOMICAL_AXES = ("LR", "AP", "SI")


class SchemaUnavailableError(ModelError):
    """The jsonschema package is not installed, so no card can be checked."""


@dataclass(frozen=True)
class Member:
    """One network of a model: a weight file and its expected sha256."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """Parsed, validated model card. ``folder`` is where the card and its weight files live."""

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
    output: str = "logits"
    tta_flips: tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def flip_axes(self) -> tuple[int, ...]:
        """Axes of a (z, y, x) model-grid window that TTA may flip: the declared ``tta_flips``.

        The model grid's x, y, z axes point to the orientation's 1st, 2nd, 3rd letter; the array is (z, y, x).
        """
        axes = []
        for flip in self.tta_flips:
            position = next(i for i, letter in enumerate(self.orientation) if letter in flip)
            axes.append(2 - position)
        return tuple(sorted(axes))

    def verify(self) -> None:
        """Check every weight file is inside the folder and matches its sha256; raise ModelError otherwise."""
        for member in self.members:
            confined_file(self.folder, member.path.relative_to(self.folder).as_posix(), self.name)
            if not member.path.is_file():
                raise ModelError(f"Model '{self.name}': weight file missing: {member.path}")
            actual = sha256_file(member.path)
            if actual != member.sha256.lower():
                raise ChecksumError(
                    f"Model '{self.name}': checksum mismatch for {member.path.name} "
                    f"(card says sha256 {member.sha256[:12]}…, file has {actual[:12]}…). "
                    "The file is corrupt or was replaced; reinstall the model."
                )


# -- schema -----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def card_schema() -> dict:
    """The card's JSON Schema (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    try:
        import jsonschema
    except ImportError as exc:
        raise SchemaUnavailableError("Checking model cards needs the Python package jsonschema "
                                     "(pip install 'jsonschema>=4.18')") from exc
    return jsonschema.Draft202012Validator(card_schema())


def allowed_networks() -> dict[str, tuple[str, ...]]:
    """MONAI network name -> the constructor arguments a card may set (from the schema: one definition)."""
    return {name: tuple(spec["properties"]) for name, spec in card_schema()["$defs"]["networks"].items()}


def _resolve_ref(ref: str) -> dict:
    node = card_schema()
    for key in ref.removeprefix("#/").split("/"):
        node = node[key]
    return node


def _schema_trail(error) -> list[dict]:
    """The schema nodes from the root down to the failing keyword (following local $refs)."""
    node, trail = card_schema(), []
    for key in error.absolute_schema_path:
        if isinstance(node, dict) and key == "$ref":
            node = _resolve_ref(node["$ref"])
        elif isinstance(node, (dict, list)):
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                break
        if isinstance(node, dict):
            trail.append(node)
    return trail


def _property_schema(path) -> dict:
    """The unconditional schema of the property at ``path`` (keys and array indices), {} if none."""
    node = card_schema()
    for key in path:
        node = node.get("items", {}) if isinstance(key, int) else node.get("properties", {}).get(key, {})
        node = _resolve_ref(node["$ref"]) if "$ref" in node else node
    return node


def _describe(error) -> str:
    """One line: the field, what is wrong, and what the schema expects there."""
    where = ".".join(str(p) for p in error.absolute_path)
    trail = [error.schema] if isinstance(error.schema, dict) else []
    trail = _schema_trail(error) + trail
    expected = next((n["description"] for n in reversed(trail) if "description" in n), "")
    if error.validator == "required":
        missing = next((k for k in error.validator_value if k not in error.instance), "?")
        where = f"{where}.{missing}" if where else missing
        spec = error.schema.get("properties", {}).get(missing) or _property_schema([*error.absolute_path, missing])
        spec = _resolve_ref(spec["$ref"]) if "$ref" in spec else spec
        problem, expected = "is missing", spec.get("description", expected)
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        where = f"{where}.{extra[0]}" if where else extra[0]
        problem, expected = "is not allowed", "one of: " + ", ".join(allowed)
    elif error.validator == "pattern":
        problem = f"{str(error.instance)[:80]!r} has the wrong form"
    else:
        problem = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    text = f"field '{where or '(card)'}' {problem}" if error.validator in ("required", "additionalProperties") \
        else f"field '{where or '(card)'}': {problem}"
    return (text + (f"; expected {expected}" if expected else "")).replace("\n", " ")


def validate_card_data(data, source: Path | str) -> None:
    """Raise ModelError naming the first field of ``data`` that breaks card.schema.json."""
    import jsonschema.exceptions

    errors = list(_validator().iter_errors(data))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise ModelError(f"Model card {source}: {_describe(error)}")


# -- paths ------------------------------------------------------------------------------------------------
def confined_file(folder: Path, relative: str, model: str = "") -> Path:
    """``folder/relative`` if it stays inside ``folder`` with no symbolic link on the way; else ModelError."""
    folder = Path(folder)
    rel = Path(relative)
    label = f"Model '{model}'" if model else f"Model folder {folder}"
    if rel.is_absolute() or ".." in rel.parts or relative.startswith(("/", "\\")) or "\\" in relative:
        raise ModelError(f"{label}: member file '{relative}' must be a relative path inside the model folder")
    path = folder
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise ModelError(f"{label}: member file '{relative}' is or passes through a symbolic link; "
                             "copy the file into the model folder")
    base = folder.resolve()
    if not path.resolve().is_relative_to(base):
        raise ModelError(f"{label}: member file '{relative}' lies outside the model folder")
    return path


def card_file(path: str | Path) -> Path:
    """The card file of a model path (a card file or a folder holding card.json); refuses symlinked cards."""
    path = Path(path)
    card_path = path / CARD_FILENAME if path.is_dir() else path
    if card_path.is_symlink():
        raise ModelError(f"Model card {card_path} is a symbolic link; give the model folder itself")
    if not card_path.is_file():
        raise ModelError(f"No model card found at {card_path}")
    return card_path


# -- parsing ----------------------------------------------------------------------------------------------
def parse_card(data, card_path: Path) -> ModelCard:
    """Validate ``data`` (schema, then the checks a schema cannot express) and build the ModelCard."""
    validate_card_data(data, card_path)
    where = f"Model card {card_path}"
    labels = {int(k): v for k, v in data["labels"].items()}
    if sorted(labels) != list(range(len(labels))):
        raise ModelError(f"{where}: field 'labels' must use the values 0..{len(labels) - 1} "
                         f"without gaps, got {sorted(labels)}")
    pre = data["preprocessing"]
    orientation = pre.get("orientation", "RAS").upper()
    if len({axis for letter in orientation for axis in ANATOMICAL_AXES if letter in axis}) != 3:
        raise ModelError(f"{where}: field 'preprocessing.orientation' must name three different axes "
                         f"(one of L/R, one of A/P, one of S/I), got {orientation!r}")
    intensity = dict(pre.get("intensity", {"method": "none"}))
    if "lower" in intensity and "upper" in intensity and not intensity["lower"] < intensity["upper"]:
        raise ModelError(f"{where}: field 'preprocessing.intensity' needs lower < upper, got "
                         f"lower {intensity['lower']} and upper {intensity['upper']}")
    arch = dict(data["architecture"])
    if arch["type"] == "monai":
        kwargs = arch["kwargs"]
        if kwargs["in_channels"] != 1:
            raise ModelError(f"{where}: field 'architecture.kwargs.in_channels' is {kwargs['in_channels']}; "
                             "SegUncertainty feeds one image channel, expected 1")
        if kwargs["out_channels"] != len(labels):
            raise ModelError(f"{where}: field 'architecture.kwargs.out_channels' is {kwargs['out_channels']} "
                             f"but 'labels' names {len(labels)} classes; expected them equal")
    if arch["type"] == "onnx" and "mc_dropout" in data.get("methods", []):
        raise ModelError(f"{where}: field 'methods' lists mc_dropout but an exported ONNX graph has no train-mode "
                         "dropout; expected softmax, ensemble or tta")
    folder = card_path.parent
    members = tuple(Member(confined_file(folder, m["file"], data["name"]), m["sha256"].lower())
                    for m in data["members"])
    known = {"name", "version", "task", "modality", "labels", "preprocessing", "patch_size", "methods",
             "architecture", "members", "output", "tta_flips"}
    return ModelCard(
        name=data["name"],
        version=data.get("version", "0"),
        task=data.get("task", ""),
        modality=data.get("modality", ""),
        labels=labels,
        spacing_mm=tuple(float(v) for v in pre["spacing_mm"]),
        orientation=orientation,
        intensity=intensity,
        patch_size=tuple(int(v) for v in data["patch_size"]),
        methods=tuple(data.get("methods", ["softmax"])),
        architecture=arch,
        members=members,
        folder=folder,
        info={k: v for k, v in data.items() if k not in known},
        output=data.get("output", "logits"),
        tta_flips=tuple(data.get("tta_flips", ())),
    )


def read_card_json(card_path: Path):
    """The card file's JSON value; ModelError if it is not readable JSON (or is over 1 MB)."""
    try:
        if card_path.stat().st_size > 1 << 20:
            raise ModelError(f"Model card {card_path} is larger than 1 MB; not a model card")
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"Model card {card_path} is not valid JSON: {reason}") from exc


def load_card(path: str | Path) -> ModelCard:
    """Parse a card from a card file or a folder holding ``card.json``; raise ModelError if invalid."""
    card_path = card_file(path)
    return parse_card(read_card_json(card_path), card_path)


def write_card(data: dict, folder: str | Path) -> Path:
    """Write ``data`` as ``folder/card.json`` after filling each member's sha256 from its file.

    The card is validated first and written through a temporary file, so an invalid card is never left behind.
    """
    folder = Path(folder)
    data = json.loads(json.dumps(data))
    for member in data["members"]:
        member["sha256"] = sha256_file(confined_file(folder, str(member["file"])))
    path = folder / CARD_FILENAME
    parse_card(data, path)
    tmp = folder / f".{CARD_FILENAME}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
