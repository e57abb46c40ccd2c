"""Runners: one member's forward pass on a backend. A runner takes a batch of windows (N, 1, z, y, x) float32
and the dropout masks of its N samples (models/dropout.SampleMasks, or None: dropout off) and returns the
(N, C, z, y, x) float32 logits.

- ``torch``: the network itself (the reference); fp32, bf16 (CPU autocast) or fp16 (CUDA autocast); the masks
  are applied by forward hooks.
- ``onnxruntime``: the exported graph (backends/export.py), fp32, CPU provider.
- ``openvino``: the exported graph compiled for the CPU, fp32 or bf16 (INFERENCE_PRECISION_HINT).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ...core.errors import UsageError
from ...models.dropout import DropoutCall, SampleMasks, per_sample_dropout
from .export import ExportedGraph

# the precisions each backend runs on the CPU (torch also fp16 on CUDA)
CPU_PRECISIONS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
INSTALL = {"onnxruntime": "pip install 'seguncertainty[onnx]'", "openvino": "pip install 'seguncertainty[openvino]'"}


def backend_version(backend: str) -> str | None:
    """The installed version of a backend's runtime, None when it is not installed; read from its package's
    metadata without importing it (a run keys the cached probe on every candidate's version, and importing a
    runtime it will not use cost 0.05-0.2 s)."""
    if backend == "torch":
        return torch.__version__
    try:
        if importlib.util.find_spec(MODULES[backend]) is None:
            return None
        return importlib.metadata.version(MODULES[backend])
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None


def require(backend: str):
    """The backend's runtime module; UsageError (exit 2, one line) when it is not installed."""
    try:
        return importlib.import_module(MODULES[backend])
    except ImportError as exc:
        raise UsageError(f"--backend {backend}: {backend} is not installed ({INSTALL[backend]})") from exc


class TorchRunner:
    """The network on torch. ``precision``: fp32; bf16 (autocast, CPU or CUDA); fp16 (autocast, CUDA only:
    a batch on the CPU runs in fp32)."""

    def __init__(self, network: nn.Module, precision: str):
        self.network, self.precision = network, precision

    def __call__(self, batch: torch.Tensor, masks: SampleMasks | None) -> torch.Tensor:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        enabled = dtype is not None and (batch.is_cuda or dtype is torch.bfloat16)
        hooks = per_sample_dropout(self.network, masks) if masks is not None else contextlib.nullcontext()
        with hooks, torch.autocast(batch.device.type, dtype=dtype or torch.float32, enabled=enabled):
            return self.network(batch).float()


class _GraphRunner:
    """An exported graph: the masks of :class:`SampleMasks` (all ones without dropout) become its inputs."""

    def __init__(self, graph: ExportedGraph):
        self.layout: Sequence[DropoutCall] = graph.layout
        self.ones: dict[int, list[np.ndarray]] = {}  # batch size -> the all-ones masks (dropout off)

    def inputs(self, batch: torch.Tensor, masks: SampleMasks | None) -> list[np.ndarray]:
        n = batch.shape[0]
        if masks is None:
            if n not in self.ones:
                self.ones[n] = [np.ones((n, *c.mask_shape), np.float32) for c in self.layout]
            values = self.ones[n]
        else:
            values = [v.cpu().numpy() for v in masks.scaled(self.layout)]
        return [np.ascontiguousarray(batch.cpu().numpy(), np.float32), *values]


class OnnxRuntimeRunner(_GraphRunner):
    def __init__(self, graph: ExportedGraph, threads: int):
        super().__init__(graph)
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(graph.path), sess_options=options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: torch.Tensor, masks: SampleMasks | None) -> torch.Tensor:
        out = self.session.run(None, dict(zip(self.names, self.inputs(batch, masks), strict=True)))[0]
        return torch.from_numpy(out)


class OpenVinoRunner(_GraphRunner):
    """The graph compiled once per batch size (static shapes run faster than a dynamic batch on the CPU)."""

    def __init__(self, graph: ExportedGraph, precision: str, threads: int):
        super().__init__(graph)
        ov = require("openvino")
        self.core = ov.Core()
        self.model = self.core.read_model(str(graph.path))
        self.config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
                       "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled: dict[int, object] = {}

    def _compiled(self, batch: int):
        if batch not in self.compiled:
            model = self.model.clone()
            model.reshape({p.get_any_name(): [batch, *list(p.get_partial_shape())[1:]] for p in model.inputs})
            self.compiled[batch] = self.core.compile_model(model, "CPU", self.config)
        return self.compiled[batch]

    def __call__(self, batch: torch.Tensor, masks: SampleMasks | None) -> torch.Tensor:
        compiled = self._compiled(batch.shape[0])
        out = compiled(self.inputs(batch, masks))[compiled.output(0)]
        return torch.from_numpy(np.array(out, np.float32, copy=True))


def make_runner(backend: str, precision: str, network: nn.Module | None, graph: ExportedGraph | None,
                threads: int):
    """The runner of one member: torch needs its ``network``, the exported backends its ``graph``."""
    if backend == "torch":
        return TorchRunner(network, precision)
    if graph is None:
        raise ValueError(f"the {backend} backend needs the exported graph")
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(graph, threads)
    return OpenVinoRunner(graph, precision, threads)
