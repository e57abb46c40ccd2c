"""Load a model by name or path with its format's adapter; build card models' networks and check them against
the model contract.

The contract (README "Model contract"): a network takes a float32 tensor (N, 1, z, y, x) on the model grid
(the card's orientation and spacing; x, y, z point to the orientation's letters) and returns
(N, C, z, y, x) with C = the card's label count, as logits or, if the card says so, probabilities.
Networks never touch the network: MONAI networks are built only from the card's allow-listed arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..core.errors import CancelledError, ModelError
from ..core.files import write_text_atomic
from .adapters.base import WholeVolumeModel
from .card import ModelCard, allowed_networks, load_card
from .catalog import BUNDLED_DIR, DEFAULT_MODEL, available_models, home_dir, list_models, usable_models, user_model_dir  # noqa: F401 (re-exported)
from .description import ModelDescription, describe_card
from .dropout import set_dropout
from .registry import CARD, ONNX, format_named, model_format

PROBE_SEED = 1234
CHECKS_CACHE = "cache/checks"  # under $SEGUNCERTAINTY_HOME: one empty file per check a verified model passed


def _check_key(card: ModelCard, check: str) -> str:
    """What a check's result depends on: the check, the card fields it reads, every member's verified sha256,
    and the torch and library versions; its sha256 names the cache file."""
    record = {"check": check, "architecture": card.architecture, "output": card.output,
              "patch_size": list(card.patch_size), "n_classes": card.n_classes,
              "weights": [m.sha256.lower() for m in card.members], "torch": torch.__version__, "library": __version__}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


_REMEMBER_CHECKS = contextvars.ContextVar("remember_checks", default=True)


@contextlib.contextmanager
def every_check_run():
    """Inside: every load-time check runs and nothing is remembered (``models check`` and ``models add``: an
    explicit check, and a failed command leaves nothing behind)."""
    token = _REMEMBER_CHECKS.set(False)
    try:
        yield
    finally:
        _REMEMBER_CHECKS.reset(token)


def passed_before(card: ModelCard, check: str) -> bool:
    return _REMEMBER_CHECKS.get() and (home_dir() / CHECKS_CACHE / _check_key(card, check)).is_file()


def record_pass(card: ModelCard, check: str) -> None:
    """Remember a pass (best effort: a read-only home only means the check runs again next time)."""
    if not _REMEMBER_CHECKS.get():
        return
    try:
        folder = home_dir() / CHECKS_CACHE
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / _check_key(card, check), "")
    except OSError:
        pass


class MemberNetworks(Sequence):
    """A card model's member networks (nn.Module, eval mode, logits out), each built on first use: MONAI
    imported, weights read. A run on exported graphs (inference/backends) whose load-time checks are
    remembered never builds them, so it never imports MONAI (about 1.7 s of a process's start)."""

    def __init__(self, card: ModelCard):
        self.card = card
        self._built: list[nn.Module | None] = [None] * len(card.members)

    def __len__(self) -> int:
        return len(self._built)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._built[i] is None:
            net = _load_member(self.card, self.card.members[i].path).eval()
            self._built[i] = ProbabilitiesAsLogits(net).eval() if self.card.output == "probabilities" else net
        return self._built[i]


@dataclass
class LoadedModel:
    """A verified card and its networks, in eval mode on the CPU; every network returns logits.
    ``runners``: the exported backends' runners made for this model (inference/backends/choice.make_runners)."""

    card: ModelCard
    networks: Sequence[nn.Module]
    runners: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def description(self) -> ModelDescription:
        return describe_card(self.card)


class ProbabilitiesAsLogits(nn.Module):
    """Wraps a network that ends in softmax: returns log(p), so the engine's softmax gives p back, not softmax(p)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.network(x).float().clamp_min(1e-12))


def build_network(architecture: dict) -> nn.Module:
    """Instantiate an allow-listed MONAI segmentation network from ``{"type": "monai", "name", "kwargs"}``."""
    name = architecture.get("name", "")
    allowed = allowed_networks()
    if name not in allowed:
        raise ModelError(f"MONAI network '{name}' is not allowed; expected one of {', '.join(allowed)}")
    kwargs = architecture.get("kwargs", {})
    extra = sorted(set(kwargs) - set(allowed[name]))
    if extra:
        raise ModelError(f"MONAI {name} argument(s) {', '.join(extra)} not allowed; "
                         f"expected only {', '.join(allowed[name])}")
    import monai.networks.nets as monai_nets  # here: runs on exported graphs never import MONAI

    try:
        return getattr(monai_nets, name)(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, IndexError) as exc:
        raise ModelError(f"Cannot build MONAI {name} from the card's kwargs: {str(exc).splitlines()[0]}") from exc


def _load_member(card: ModelCard, path: Path) -> nn.Module:
    if card.architecture["type"] == ONNX:
        from .adapters.onnx import OnnxNetwork

        return OnnxNetwork(path, card)
    if card.architecture["type"] == "torchscript":
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13 but still what users have
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch.jit.load raises RuntimeError, ValueError, zip and pickle errors
            raise ModelError(f"Cannot load TorchScript file {path.name}: {str(exc).splitlines()[0]}") from exc
    net = build_network(card.architecture)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # torch.load raises many types (pickle, zip, shape mismatch)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"Cannot load weights {path.name} into {card.architecture['name']}: {first}") from exc
    return net


def _probe_input(card: ModelCard) -> torch.Tensor:
    """A fixed random (1, 1, z, y, x) window in [0, 1], drawn without touching torch's global RNG."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.rand((1, 1, *reversed(card.patch_size)), generator=generator)


def _looks_like_probabilities(out: torch.Tensor) -> bool:
    return bool(out.min() >= 0 and out.max() <= 1 and torch.allclose(out.sum(1), torch.ones(()), atol=1e-3))


@torch.no_grad()
def check_outputs(card: ModelCard, networks: list[nn.Module]) -> None:
    """Run each network once on a patch-sized window: (1, C, z, y, x) out, finite, logits vs probabilities
    as the card says. Raises ModelError naming the member and what the contract expects."""
    x = _probe_input(card)
    expected = (1, card.n_classes, *x.shape[2:])
    for i, net in enumerate(networks):
        raw = net.network if isinstance(net, ProbabilitiesAsLogits) else net
        where = f"Model '{card.name}' member {i}"
        set_dropout(raw, False)
        try:
            out = raw(x)
        except CancelledError:  # the user's, raised between the network's layers: not the network's fault
            raise
        except Exception as exc:  # a user's network can raise anything on the wrong input
            raise ModelError(f"{where} fails on a (1, 1, {', '.join(map(str, x.shape[2:]))}) float32 window "
                             f"(one channel, z y x): {str(exc).strip().splitlines()[0][:200]}") from exc
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"{where} returns {shape}; expected {expected} (one channel per label in the card)")
        out = out.float()
        if not torch.isfinite(out).all():
            raise ModelError(f"{where} returns NaN or infinite values on a test window")
        probabilities = _looks_like_probabilities(out)
        if card.output == "logits" and probabilities:
            raise ModelError(f"{where} returns values that sum to 1 over the classes (it ends in softmax) but the "
                             "card says 'output': 'logits'; set \"output\": \"probabilities\" (no second softmax)")
        if card.output == "probabilities" and not probabilities:
            raise ModelError(f"{where}: the card says 'output': 'probabilities' but the values are not in [0, 1] "
                             "or do not sum to 1 over the classes; set \"output\": \"logits\"")


@torch.no_grad()
def check_mc_dropout(model: LoadedModel, members: Iterable[int]) -> None:
    """Refuse MC dropout unless each listed member has dropout layers that change its output.

    Two dropout-on passes on the same window must differ; identical samples mean the dropout is inactive
    (p = 0, or a traced TorchScript that recorded eval mode) and MC dropout would report zero uncertainty.
    A member's pass is remembered per verified weights (:func:`_check_key`); a refusal is never remembered.
    """
    if model.card.architecture["type"] == ONNX:
        from .adapters.onnx import MC_DROPOUT_REASON

        raise ModelError(f"Model '{model.card.name}' is an ONNX model: {MC_DROPOUT_REASON}")
    x = _probe_input(model.card)
    for i in members:
        if passed_before(model.card, f"mc_dropout member {i}"):  # it had dropout layers that changed its output
            continue
        net = model.networks[i]
        if set_dropout(net, True) == 0:
            set_dropout(net, False)
            raise ModelError(f"Model '{model.card.name}' member {i} has no dropout layer: "
                             "MC dropout is impossible; use another method")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PROBE_SEED)
                first, second = net(x), net(x)
        finally:
            set_dropout(net, False)
        if torch.equal(first, second):
            raise ModelError(f"Model '{model.card.name}' member {i}: its dropout is inactive (two MC-dropout "
                             "samples were identical: dropout p = 0, or a traced TorchScript that recorded "
                             "eval mode), so MC dropout would report no uncertainty; use ensemble or tta")
        record_pass(model.card, f"mc_dropout member {i}")


def load_model(name_or_path: str | os.PathLike) -> LoadedModel | WholeVolumeModel:
    """The model at a path (a model folder, or a card file), or the bundled or installed model of that name,
    loaded by its format's adapter under the name it is installed under; ModelError on any problem.

    Card and ONNX models give a LoadedModel; nnU-Net v2 folders and MONAI bundles their WholeVolumeModel.
    """
    path = Path(name_or_path)
    if path.is_file():  # a card file, whatever its name
        return format_named(CARD).load(path)
    if path.exists():
        return model_format(path).load(path)
    entries = list_models()
    entry = usable_models(entries).get(str(name_or_path))
    if entry is None:
        names = ", ".join(sorted(e.name for e in entries if e.error is None)) or "none"
        raise ModelError(f"Model '{name_or_path}' not found: not a path, nor a known model (known: {names})")
    return format_named(entry.format).load(entry.folder, entry.name)


def load_card_model(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    """The card model at ``path`` (folder or card file), called ``name`` (None: the card's): checksums
    verified, every member loaded and its outputs checked against the model contract (once per verified
    weights, torch and library version: passes are remembered in ``$SEGUNCERTAINTY_HOME/cache/checks``)."""
    card = load_card(path)
    if name is not None and name != card.name:
        card = dataclasses.replace(card, name=name)
    card.verify()
    networks = MemberNetworks(card)
    # the probe pass builds every member and costs one forward pass each: a pass is remembered per verified
    # weights, so a later load builds a member only when a run needs it
    if not passed_before(card, "outputs"):
        check_outputs(card, networks)
        record_pass(card, "outputs")
    return LoadedModel(card, networks)
