"""Uncertainty methods as sample plans: which network, which flip and whether dropout is on, per sample.

softmax: one deterministic pass (entropy only). mc_dropout: T passes with only the dropout modules in
train mode (normalization layers stay in eval). ensemble: one pass per member. tta: flips over the
spatial axes the model declares (its card's tta_flips; up to 8 combinations). Combinations:
"ensemble+mc_dropout" (T per member) and "ensemble+tta" (every member with every flip).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import nn

from ..errors import ModelError

METHODS = ("softmax", "mc_dropout", "ensemble", "tta", "ensemble+mc_dropout", "ensemble+tta")
DEFAULT_SAMPLES = {"mc_dropout": 20, "tta": 8}


def flip_combinations(axes=(0, 1, 2)) -> tuple[tuple[int, ...], ...]:
    """Every subset of ``axes`` (spatial axes of a (z, y, x) window), identity first: (), (0,), ..., (0, 1, 2)."""
    axes = tuple(sorted(set(axes)))
    return tuple(combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r))


FLIPS = flip_combinations()


@dataclass(frozen=True)
class SampleSpec:
    """One stochastic forward pass: ensemble member, flipped spatial axes, dropout on or off."""

    member: int
    flip: tuple[int, ...] = ()
    dropout: bool = False


def plan_samples(method: str, n_members: int, samples: int | None = None,
                 flip_axes=(0, 1, 2)) -> list[SampleSpec]:
    """The list of passes for ``method``; ``samples`` is T per member (MC dropout) or flips (TTA).

    TTA flips only ``flip_axes``, the (z, y, x) axes the model was trained to be invariant to.
    """
    if method not in METHODS:
        raise ModelError(f"Unknown method '{method}'; choose one of {', '.join(METHODS)}")
    parts = method.split("+")
    members = range(n_members) if "ensemble" in parts else range(1)
    if "ensemble" in parts and n_members < 2:
        raise ModelError(f"Method '{method}' needs an ensemble, but the model has only one member")
    if "mc_dropout" in parts:
        t = samples or DEFAULT_SAMPLES["mc_dropout"]
        if t < 2:
            raise ModelError("MC dropout needs at least 2 samples")
        return [SampleSpec(m, (), True) for m in members for _ in range(t)]
    if "tta" in parts:
        flips = flip_combinations(flip_axes)
        if len(flips) < 2:
            raise ModelError("Test-time augmentation needs flips the model was trained with; the model declares none")
        t = samples or min(DEFAULT_SAMPLES["tta"], len(flips))
        if not 2 <= t <= len(flips):
            raise ModelError(f"Test-time augmentation uses 2 to {len(flips)} flip combinations "
                             f"(the flips the model declares), got {t}")
        return [SampleSpec(m, flip) for m in members for flip in flips[:t]]
    return [SampleSpec(m) for m in members]


def is_dropout(module: nn.Module) -> bool:
    """True for torch dropout layers, also inside TorchScript modules."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    return getattr(module, "original_name", "") in {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                                    "AlphaDropout", "FeatureAlphaDropout"}


def set_dropout(network: nn.Module, enabled: bool) -> int:
    """Put ``network`` in eval mode with only its dropout modules in train mode if ``enabled``.

    Returns the number of dropout modules. BatchNorm/InstanceNorm always stay in eval mode (calling
    ``network.train()`` instead, as some tools do, would use batch statistics of the samples).
    """
    network.eval()
    count = 0
    for module in network.modules():
        if is_dropout(module):
            module.train(enabled)
            count += 1
    return count
