"""Which backend and precision run a card model's forward passes, and the accuracy guard.

``auto`` on the CPU probes the candidates on one fixed window (:func:`probe_window`): each member's softmax
with one dropout-mask draw (dropout off for networks without dropout) against torch fp32, the reference, and
the time of one batch-1 pass of member 0 (the best of ``PROBE_REPEATS``). A candidate is usable when its
max |delta p| over every voxel, class and member is <= the guard (``GUARD`` = 0.01); the fastest usable one
is chosen, torch fp32 (delta p = 0) when no other passes or is installed. The outcome is cached in
``$SEGUNCERTAINTY_HOME/cache/backends/<key>.json``, the key being the sha256 of the CPU (model name and
flags), the thread count, the weights' sha256, the candidates, the guard and the runtimes' versions. An
explicit backend is used as asked; its figure against torch fp32 on the probe window is measured and
recorded too. On CUDA, torch runs (fp16 autocast unless a precision is given) and nothing is probed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ... import __version__
from ...core.errors import UsageError
from ...core.files import write_text_atomic
from ...core.options import SegmentOptions
from ...models.catalog import home_dir
from ...models.dropout import MASK_GENERATOR, SampleMasks, per_sample_dropout_possible, set_dropout
from ...models.loader import LoadedModel, ProbabilitiesAsLogits, passed_before, record_pass
from .export import exported_graphs
from .runners import CPU_PRECISIONS, backend_version, make_runner, require

GUARD = 0.01  # max |delta p| against torch fp32 on the probe window
BACKENDS_CACHE = "cache/backends"
PROBE_SEED, PROBE_REPEATS = 1234, 3
REFERENCE = ("torch", "fp32")


@dataclass(frozen=True)
class BackendChoice:
    """The backend and precision a run uses. ``max_abs_dp``: max |delta p| against torch fp32 on the probe
    window (0 for the reference itself, None where nothing was probed: CUDA); ``chosen_by``: requested,
    probe, cached probe, no other candidate (auto with only torch fp32 to try) or cuda; ``probe``: each
    candidate's figures, "backend/precision" -> {ms, max_abs_dp}."""

    backend: str
    precision: str
    max_abs_dp: float | None
    chosen_by: str
    probe: dict[str, dict] = field(default_factory=dict)

    def record(self) -> dict:
        """The manifest's ``inference`` entry."""
        return {**asdict(self), "guard": GUARD, "mask_generator": MASK_GENERATOR,
                "version": backend_version(self.backend)}


def cpu_identity() -> dict:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo; elsewhere platform's names)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return {"model": fields.get("model name", ""), "flags": fields.get("flags", "")}
    except OSError:
        return {"model": platform.processor(), "flags": platform.machine()}


def has_bf16(flags: str) -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX): bf16 is then worth probing."""
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def exportable(model: LoadedModel) -> bool:
    """Card networks the exported backends can run: MONAI networks whose dropout is torch's own. A yes is
    remembered per verified weights (models/loader.passed_before), so a later run need not build the networks."""
    if model.card.architecture.get("type") != "monai":
        return False
    if passed_before(model.card, "exportable"):
        return True
    if not all(per_sample_dropout_possible(n) for n in model.networks):
        return False
    record_pass(model.card, "exportable")
    return True


def candidates(model: LoadedModel, precision: str) -> list[tuple[str, str]]:
    """What ``auto`` probes for ``precision`` (auto, fp32 or bf16): the reference first; installed runtimes only."""
    bf16 = has_bf16(cpu_identity()["flags"])
    wanted = {"auto": ("fp32", "bf16") if bf16 else ("fp32",), "fp32": ("fp32",), "bf16": ("bf16",)}[precision]
    backends = ["torch"] + ([b for b in ("openvino", "onnxruntime") if backend_version(b)] if exportable(model)
                            else [])
    return [REFERENCE] + [(b, p) for b in backends for p in wanted
                          if p in CPU_PRECISIONS[b] and (b, p) != REFERENCE]


def probe_window(card) -> torch.Tensor:
    """A fixed (1, 1, z, y, x) window in [0, 1] like a normalized scan: a bright ellipsoid on a dark
    background with Gaussian noise (sd 0.05), drawn without touching torch's global generator."""
    shape = tuple(reversed(card.patch_size))
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum((a / r) ** 2 for a, r in zip(axes, (0.7, 0.6, 0.5), strict=True)) <= 1
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(PROBE_SEED)) * 0.05
    return (0.15 + 0.6 * inside.float() + noise).clamp(0, 1)[None, None]


def _cache_key(model: LoadedModel, options: SegmentOptions, cands: list[tuple[str, str]], guard: float) -> str:
    record = {"cpu": cpu_identity(), "threads": torch.get_num_threads(), "guard": guard, "library": __version__,
              "weights": [m.sha256.lower() for m in model.card.members], "candidates": cands,
              "versions": {b: backend_version(b) for b, _ in cands}, "request": [options.backend, options.precision]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def _probe(model: LoadedModel, cands: list[tuple[str, str]]) -> dict[str, dict]:
    """Each candidate's {ms, max_abs_dp} on the probe window (see the module's doc); a candidate that fails
    to build or run gets {error}."""
    x = probe_window(model.card)
    threads = torch.get_num_threads()
    graphs = exported_graphs(model.card, model.networks) if any(b != "torch" for b, _ in cands) else None

    def masks(net) -> SampleMasks | None:
        raw = net.network if isinstance(net, ProbabilitiesAsLogits) else net
        return SampleMasks(PROBE_SEED, 0, [0]) if set_dropout(raw, True) else None

    def softmax_all(backend: str, precision: str) -> tuple[list[torch.Tensor], object]:
        out, first = [], None
        for i, net in enumerate(model.networks):
            runner = make_runner(backend, precision, net, graphs[i] if graphs else None, threads)
            first = first or runner
            try:
                out.append(torch.softmax(runner(x, masks(net)), 1))
            finally:
                set_dropout(net, False)
        return out, first

    reference, reference_runner = softmax_all(*REFERENCE)
    figures = {}
    for backend, precision in cands:
        name = f"{backend}/{precision}"
        try:
            if (backend, precision) == REFERENCE:
                dp, runner = 0.0, reference_runner
            else:
                probs, runner = softmax_all(backend, precision)
                dp = max(float((p - r).abs().max()) for p, r in zip(probs, reference, strict=True))
            times = []
            for _ in range(PROBE_REPEATS):
                start = time.perf_counter()
                runner(x, None)
                times.append(time.perf_counter() - start)
            figures[name] = {"ms": round(1000 * min(times), 2), "max_abs_dp": dp}
        except UsageError:
            raise
        except Exception as exc:  # a runtime that cannot compile or run this graph: not a candidate
            figures[name] = {"error": str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)}
    return figures


def choose_backend(model: LoadedModel, options: SegmentOptions, device: torch.device,
                   guard: float = GUARD) -> BackendChoice:
    """The backend and precision of a run (see the module's doc); UsageError (exit 2) when an explicit
    backend is not installed or cannot run this model."""
    backend, precision = options.backend, options.precision
    if device.type == "cuda":
        if backend not in ("auto", "torch"):
            raise UsageError(f"--backend {backend} runs on the CPU; use --device cpu or --backend torch")
        return BackendChoice("torch", "fp16" if precision == "auto" else precision, None, "cuda")
    if precision == "fp16":
        raise UsageError("--precision fp16 runs on CUDA only (autocast); on the CPU use fp32 or bf16")
    if backend != "auto":
        precision = "fp32" if precision == "auto" else precision
        if backend != "torch":
            require(backend)
            if not exportable(model):
                raise UsageError(f"--backend {backend}: model '{model.card.name}' is not a MONAI card network "
                                 "with torch dropout layers, so only --backend torch runs it")
        cands = [(backend, precision)]
    else:
        cands = candidates(model, precision)
    if cands == [REFERENCE]:
        return BackendChoice(*REFERENCE, 0.0, "requested" if backend != "auto" else "no other candidate",
                             {"torch/fp32": {"max_abs_dp": 0.0}})
    path = home_dir() / BACKENDS_CACHE / f"{_cache_key(model, options, cands, guard)}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        return BackendChoice(cached["backend"], cached["precision"], cached["max_abs_dp"], "cached probe"
                             if backend == "auto" else "requested", cached["probe"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    figures = _probe(model, cands)
    if backend != "auto":
        name = f"{backend}/{precision}"
        if "error" in figures[name]:
            raise UsageError(f"--backend {backend} --precision {precision} cannot run model "
                             f"'{model.card.name}': {figures[name]['error']}")
        choice = BackendChoice(backend, precision, figures[name]["max_abs_dp"], "requested", figures)
    else:
        usable = [(f["ms"], name) for name, f in figures.items() if "error" not in f and f["max_abs_dp"] <= guard]
        best = min(usable, default=(0.0, "torch/fp32"))[1]
        choice = BackendChoice(*best.split("/"), figures.get(best, {}).get("max_abs_dp", 0.0), "probe", figures)
    try:  # best effort: a read-only home only means the probe runs again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(asdict(choice), indent=1))
    except OSError:
        pass
    return choice


def make_runners(model: LoadedModel, choice: BackendChoice) -> list:
    """One runner per member for ``choice`` (backends/runners.py); the exported backends' are made once per
    loaded model (a cohort worker, the Slicer module: ONNX Runtime sessions and OpenVINO compilations once),
    from the cached graphs: the torch networks are not built unless a graph must be exported."""
    threads = torch.get_num_threads()
    if choice.backend == "torch":
        return [make_runner("torch", choice.precision, net, None, threads) for net in model.networks]
    key = (choice.backend, choice.precision, threads)
    if key not in model.runners:
        graphs = exported_graphs(model.card, model.networks)
        model.runners[key] = [make_runner(choice.backend, choice.precision, None, graph, threads) for graph in graphs]
    return model.runners[key]
