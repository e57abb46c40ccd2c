"""Resolve a model by name or path, verify it and build its networks (MONAI or TorchScript)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import monai.networks.nets as monai_nets
import torch
from torch import nn

from ..errors import ModelError
from .adapters.base import WholeVolumeModel, load_whole_volume_model
from .card import ModelCard, load_card
from .catalog import BUNDLED_DIR, DEFAULT_MODEL, available_models, user_model_dir  # noqa: F401 (re-exported)


def resolve_card(name_or_path: str | os.PathLike) -> ModelCard:
    """A card from a path (card file or folder) or from the name of a bundled/installed model."""
    path = Path(name_or_path)
    if path.exists():
        return load_card(path)
    models = available_models()
    if str(name_or_path) in models:
        return load_card(models[str(name_or_path)])
    names = ", ".join(sorted(models)) or "none"
    raise ModelError(f"Model '{name_or_path}' not found: not a path, nor a known model (known: {names})")


@dataclass
class LoadedModel:
    """A verified card and its networks, in eval mode on the CPU."""

    card: ModelCard
    networks: list[nn.Module]


def build_network(architecture: dict) -> nn.Module:
    """Instantiate a MONAI network from ``{"type": "monai", "name": ..., "kwargs": {...}}``."""
    name = architecture.get("name", "")
    cls = getattr(monai_nets, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ModelError(f"Unknown MONAI network '{name}' in the model card")
    try:
        return cls(**architecture.get("kwargs", {}))
    except TypeError as exc:
        raise ModelError(f"Cannot build MONAI {name} from the card's kwargs: {exc}") from exc


def load_model(name_or_path: str | os.PathLike) -> LoadedModel | WholeVolumeModel:
    """Resolve, verify checksums and load every member network; raise ModelError on any problem.

    A path holding an nnU-Net v2 folder or a MONAI bundle gives its adapter (models/adapters/) instead.
    """
    adapter = load_whole_volume_model(name_or_path)
    if adapter is not None:
        return adapter
    card = resolve_card(name_or_path)
    card.verify()
    networks = []
    for member in card.members:
        if card.architecture["type"] == "torchscript":
            try:
                with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13 but still what users have
                    warnings.simplefilter("ignore", DeprecationWarning)
                    net = torch.jit.load(str(member.path), map_location="cpu")
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"Cannot load TorchScript file {member.path}: {exc}") from exc
        else:
            net = build_network(card.architecture)
            try:
                state = torch.load(member.path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except Exception as exc:  # torch.load raises many types (pickle, zip, shape mismatch)
                raise ModelError(f"Cannot load weights {member.path} into {card.architecture['name']}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        networks.append(net.eval())
    return LoadedModel(card, networks)
