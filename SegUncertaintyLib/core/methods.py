"""Uncertainty methods as sample plans: which network, which flip and whether dropout is on, per sample.

softmax: one deterministic pass (entropy only). mc_dropout: T passes with only the dropout modules in
train mode (normalization layers stay in eval). ensemble: one pass per member. tta: flips over the
spatial axes the model declares (its card's tta_flips; up to 8 combinations). Combinations:
"ensemble+mc_dropout" (T per member) and "ensemble+tta" (every member with every flip).

Torch-free: the command line and the Slicer module plan with it before anything heavy is imported.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .errors import ModelError, UsageError
from .vocabulary import METHODS

DEFAULT_SAMPLES = {"mc_dropout": 20, "tta": 8}


def flip_combinations(axes=(0, 1, 2)) -> tuple[tuple[int, ...], ...]:
    """Every subset of ``axes`` (spatial axes of a (z, y, x) window), identity first: (), (0,), ..., (0, 1, 2)."""
    axes = tuple(sorted(set(axes)))
    return tuple(combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r))


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
    ``samples`` None means the method's default; a count the method cannot use is a UsageError (exit 2).
    """
    if method not in METHODS:
        raise UsageError(f"Unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise UsageError(f"--samples must be a whole number of at least 1, got {samples!r}")
    parts = method.split("+")
    members = range(n_members) if "ensemble" in parts else range(1)
    if "ensemble" in parts and n_members < 2:
        raise ModelError(f"Method '{method}' needs an ensemble, but the model has only one member")
    if "mc_dropout" in parts:
        t = DEFAULT_SAMPLES["mc_dropout"] if samples is None else samples
        if t < 2:
            raise UsageError(f"MC dropout needs --samples of at least 2, got {t}")
        return [SampleSpec(m, (), True) for m in members for _ in range(t)]
    if "tta" in parts:
        flips = flip_combinations(flip_axes)
        if len(flips) < 2:
            raise ModelError("Test-time augmentation needs flips the model was trained with; the model declares none")
        t = min(DEFAULT_SAMPLES["tta"], len(flips)) if samples is None else samples
        if not 2 <= t <= len(flips):
            raise UsageError(f"Test-time augmentation uses --samples 2 to {len(flips)} (combinations of the flips "
                             f"the model declares), got {t}")
        return [SampleSpec(m, flip) for m in members for flip in flips[:t]]
    return [SampleSpec(m) for m in members]
