"""A card network exported once to ONNX with its dropout masks as explicit inputs, cached per weights sha256.

The graph ``member{i}.onnx`` takes ``x`` (N, 1, z, y, x) float32 and one input ``mask{j}`` per dropout call j
of a pass (call order; (N, C, z', y', x') elementwise, (N, C, 1, 1, 1) channel), the float32 multiplier
keep / (1 - p) that models/dropout.SampleMasks draws; it returns the (N, C, z, y, x) logits. Dropout off is
all-ones masks (multiplying by 1 is exact). Made with torch's TorchScript-based exporter (no onnxscript), in
``$SEGUNCERTAINTY_HOME/cache/graphs/<key>/``, the key being the sha256 of the weights' sha256, the card's
architecture and patch size, and the torch and library versions; ``graph.json`` records each file's sha256
and the dropout layout, and a cached file whose sha256 differs is exported again. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ... import __version__
from ...core.files import sha256_file, write_text_atomic
from ...models.card import ModelCard
from ...models.catalog import home_dir
from ...models.dropout import DropoutCall, dropout_layout, is_dropout

GRAPHS_CACHE = "cache/graphs"
OPSET = 17


@dataclass(frozen=True)
class ExportedGraph:
    """One member's exported graph: its file, the file's sha256 and the dropout calls it takes masks for."""

    path: Path
    sha256: str
    layout: tuple[DropoutCall, ...]


class MaskInputs(nn.Module):
    """``network`` with its dropout as explicit multipliers: forward(x, *masks), one mask per dropout call in
    call order (the modules themselves stay in eval mode, the identity)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.dropouts = [m for m in network.modules() if is_dropout(m)]

    def forward(self, x: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
        remaining = list(masks)
        handles = [m.register_forward_hook(lambda _m, _i, out: out * remaining.pop(0)) for m in self.dropouts]
        try:
            return self.network(x)
        finally:
            for h in handles:
                h.remove()


def graph_key(card: ModelCard) -> str:
    """What an exported graph depends on, hashed: the weights, the architecture, the window and the versions."""
    record = {"weights": [m.sha256.lower() for m in card.members], "architecture": card.architecture,
              "output": card.output, "patch_size": list(card.patch_size), "torch": torch.__version__,
              "library": __version__, "opset": OPSET}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _export(network: nn.Module, path: Path, window: Sequence[int]) -> tuple[DropoutCall, ...]:
    layout = tuple(dropout_layout(network, window))
    x = torch.zeros((1, 1, *window))
    masks = tuple(torch.ones((1, *c.mask_shape)) for c in layout)
    names = ["x"] + [f"mask{j}" for j in range(len(layout))]
    tmp = Path(tempfile.mkstemp(suffix=".onnx", dir=path.parent)[1])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(MaskInputs(network).eval(), (x, *masks), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=names, output_names=["logits"],
                              dynamic_axes={n: {0: "batch"} for n in [*names, "logits"]})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return layout


def exported_graphs(card: ModelCard, networks: Sequence[nn.Module]) -> list[ExportedGraph]:
    """Every member's graph, exported on first use and read from the cache after (see the module's doc)."""
    folder = home_dir() / GRAPHS_CACHE / graph_key(card)
    record_path = folder / "graph.json"
    window = tuple(reversed(card.patch_size))
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        graphs = [ExportedGraph(folder / g["file"], g["sha256"], tuple(DropoutCall(c["elementwise"], c["p"],
                                                                                   tuple(c["shape"]))
                                                                       for c in g["layout"]))
                  for g in record["members"]]
        if len(graphs) == len(networks) and all(g.path.is_file() and sha256_file(g.path) == g.sha256 for g in graphs):
            return graphs
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not made yet, or damaged: made again
    folder.mkdir(parents=True, exist_ok=True)
    graphs = []
    for i, net in enumerate(networks):
        path = folder / f"member{i}.onnx"
        layout = _export(net, path, window)
        graphs.append(ExportedGraph(path, sha256_file(path), layout))
    record = {"card": card.name, "weights": [m.sha256 for m in card.members],
              "members": [{"file": g.path.name, "sha256": g.sha256,
                           "layout": [{"elementwise": c.elementwise, "p": c.p, "shape": list(c.shape)}
                                      for c in g.layout]} for g in graphs]}
    write_text_atomic(record_path, json.dumps(record, indent=1))
    return graphs
