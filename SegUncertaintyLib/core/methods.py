"""Uncertainty methods: their names, their parts, and their sample plans. The one place a method is read.

softmax: one deterministic pass (entropy only). mc_dropout: T passes with only the dropout modules in
train mode (normalization layers stay in eval). ensemble: one pass per member. tta: flips over the
spatial axes the model declares (its card's tta_flips; up to 8 combinations). Combinations:
"ensemble+mc_dropout" (T per member) and "ensemble+tta" (every member with every flip).

Faults: an unknown method or a sample count the method cannot use is a UsageError (exit 2); a method the
model cannot do (an ensemble of one, TTA without declared flips, MC dropout without dropout) a ModelError
(exit 4). Torch-free: the command line and the Slicer module plan with it before anything heavy is imported.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .errors import ModelError, SegUncertaintyError, UsageError

#: every method, with the label a user reads
METHOD_LABELS = {"softmax": "Softmax (one pass)", "mc_dropout": "MC dropout", "ensemble": "Ensemble",
                 "tta": "Test-time augmentation", "ensemble+mc_dropout": "Ensemble + MC dropout",
                 "ensemble+tta": "Ensemble + TTA"}
METHODS = tuple(METHOD_LABELS)
DEFAULT_METHOD = "mc_dropout"  # the command line's documented default
DEFAULT_SAMPLES = {"mc_dropout": 20, "tta": 8}  # T per member; TTA: at most this many flip combinations


@dataclass(frozen=True)
class Method:
    """A parsed method: which kinds of sampling it combines."""

    name: str
    ensemble: bool = False
    dropout: bool = False
    tta: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        """The single methods it combines, e.g. ("ensemble", "tta"); ("softmax",) for one pass."""
        return tuple(self.name.split("+"))

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.name]


def parse_method(text: str) -> Method:
    """The Method named ``text``; UsageError for an unknown name."""
    if text not in METHOD_LABELS:
        raise UsageError(f"Unknown method '{text}'; choose one of {', '.join(METHODS)}")
    parts = text.split("+")
    return Method(text, "ensemble" in parts, "mc_dropout" in parts, "tta" in parts)


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


def check_samples(samples: int | None) -> None:
    """UsageError unless ``samples`` is None (the method's default) or a whole number of at least 1."""
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise UsageError(f"--samples must be a whole number of at least 1, got {samples!r}")


def plan_samples(method: str | Method, n_members: int, samples: int | None = None,
                 flip_axes=(0, 1, 2)) -> list[SampleSpec]:
    """The list of passes for ``method``; ``samples`` is T per member (MC dropout) or flips (TTA).

    TTA flips only ``flip_axes``, the (z, y, x) axes the model was trained to be invariant to.
    ``samples`` None means the method's default. UsageError for an unknown method or a count the method
    cannot use; ModelError for an ensemble of one member or TTA without declared flips.
    """
    m = method if isinstance(method, Method) else parse_method(method)
    check_samples(samples)
    members = range(n_members) if m.ensemble else range(1)
    if m.ensemble and n_members < 2:
        raise ModelError(f"Method '{m.name}' needs an ensemble, but the model has only one member")
    if m.dropout:
        t = DEFAULT_SAMPLES["mc_dropout"] if samples is None else samples
        if t < 2:
            raise UsageError(f"MC dropout needs --samples of at least 2, got {t}")
        return [SampleSpec(i, (), True) for i in members for _ in range(t)]
    if m.tta:
        flips = flip_combinations(flip_axes)
        if len(flips) < 2:
            raise ModelError("Test-time augmentation needs flips the model was trained with; the model declares none")
        t = min(DEFAULT_SAMPLES["tta"], len(flips)) if samples is None else samples
        if not 2 <= t <= len(flips):
            raise UsageError(f"Test-time augmentation uses --samples 2 to {len(flips)} (combinations of the flips "
                             f"the model declares), got {t}")
        return [SampleSpec(i, flip) for i in members for flip in flips[:t]]
    return [SampleSpec(i) for i in members]


def count_passes(method: str, samples: int | None, members: int, flip_axes=(0, 1, 2)) -> int | None:
    """Forward passes per sliding window as :func:`plan_samples` plans them; None where it refuses."""
    try:
        return len(plan_samples(method, members, samples, flip_axes))
    except SegUncertaintyError:
        return None


def samples_option(method: str, samples: int) -> int | None:
    """What a panel's sample count means as ``--samples``: MC dropout passes per member; None for the other
    methods, so TTA uses the default over the flips the model declares (a fixed count could exceed them)."""
    return int(samples) if parse_method(method).dropout else None


def check_capable(method: str | Method, model: str, *, members: int, flips: bool, dropout: bool,
                  reasons: dict[str, str] | None = None) -> Method:
    """The parsed method, or ModelError when the model cannot do it: an ensemble with fewer than 2
    ``members``, TTA without declared ``flips``, MC dropout without active ``dropout``. ``reasons``
    ("ensemble", "tta", "mc_dropout"): the format's own sentence for a refusal, after ``model``."""
    m = method if isinstance(method, Method) else parse_method(method)
    reasons = reasons or {}
    refused = next((part for part, lacking in (("ensemble", m.ensemble and members < 2), ("tta", m.tta and not flips),
                                               ("mc_dropout", m.dropout and not dropout)) if lacking), None)
    if refused is not None:
        default = {"ensemble": "has one member: no ensemble", "tta": "declares no test-time flips",
                   "mc_dropout": "has no active dropout layer: MC dropout is impossible"}[refused]
        raise ModelError(f"{model} {reasons.get(refused, default)}")
    return m
