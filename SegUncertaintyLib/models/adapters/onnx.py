"""ONNX networks described by a card (``pip install 'seguncertainty[onnx]'``), run with onnxruntime.

Each member file is wrapped as a torch module, so the sliding-window engine runs it like any card network
(softmax, ensemble, tta). The graph must take one float32 input (N, 1, z, y, x) and give one output
(N, C, z, y, x); fixed sizes in the graph are checked against the card. An exported ONNX graph has no
train-mode dropout, so MC dropout is refused. Sessions use the CPU provider only; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import ModelError
from ..card import ModelCard

INSTALL_HINT = "ONNX models need the optional dependency: pip install 'seguncertainty[onnx]'"
MC_DROPOUT_REASON = ("an exported ONNX graph has no train-mode dropout (export freezes dropout as identity), so "
                     "MC dropout would give identical samples; use ensemble or tta")
INPUT_CONTRACT = "one float32 input (N, 1, z, y, x): one channel, z y x"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"{INSTALL_HINT} ({exc})") from exc
    return onnxruntime


def _fixed(dim) -> int | None:
    """A graph dimension's size, or None when it is symbolic (dynamic)."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxNetwork(nn.Module):
    """One ONNX member as a torch module: (N, 1, z, y, x) float32 -> (N, C, z, y, x) float32.

    A graph with a fixed batch size of 1 is run one window at a time."""

    def __init__(self, path: Path, card: ModelCard):
        super().__init__()
        ort = _onnxruntime()
        where = f"Model '{card.name}' ONNX file {path.name}"
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings on the user's terminal
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{where} cannot be loaded by onnxruntime: {first[:200]}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{where} has {len(inputs)} inputs; expected {INPUT_CONTRACT}")
        if len(outputs) != 1:
            raise ModelError(f"{where} has {len(outputs)} outputs; expected one (N, C, z, y, x) output")
        graph_input = inputs[0]
        shape = list(graph_input.shape)
        if graph_input.type != "tensor(float)":
            raise ModelError(f"{where} takes {graph_input.type}; expected {INPUT_CONTRACT}")
        if len(shape) != 5:
            raise ModelError(f"{where} takes a {len(shape)}-D input; expected {INPUT_CONTRACT}")
        if _fixed(shape[1]) not in (None, 1):
            raise ModelError(f"{where} takes {shape[1]} input channels; expected {INPUT_CONTRACT}")
        window = tuple(reversed(card.patch_size))
        spatial = tuple(_fixed(d) for d in shape[2:])
        if any(s is not None and s != w for s, w in zip(spatial, window, strict=True)):
            raise ModelError(f"{where} has the fixed spatial input size {tuple(shape[2:])} (z y x) but the card's "
                             f"patch_size is {list(card.patch_size)} (x y z); make them agree")
        self.input_name, self.output_name = graph_input.name, outputs[0].name
        self.one_at_a_time = _fixed(shape[0]) == 1

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self.one_at_a_time:
            out = np.concatenate([self._run(array[i:i + 1]) for i in range(len(array))])
        else:
            out = self._run(array)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

