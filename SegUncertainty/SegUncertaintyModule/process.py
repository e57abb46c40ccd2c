"""The background run of the library's command line: its arguments, its progress lines read back, and the
line saying what ran its forward passes (its manifest's ``inference`` entry).

``seguncertainty segment --progress json`` prints one JSON object per line on stdout:
{"stage", "fraction", "message", "elapsed_s"}; everything else it prints is log text. Exit codes are
the command line's (0 ok, 130 cancelled, others errors with a one-line message).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

# The panel's methods, devices and exit codes: the library's core, standard library only (re-exported here)
from SegUncertaintyLib.core.errors import CancelledError
from SegUncertaintyLib.core.methods import DEFAULT_METHOD, METHOD_LABELS, count_passes, samples_option  # noqa: F401
from SegUncertaintyLib.core.options import BACKENDS, DEFAULT_BACKEND, DEVICES, PRECISIONS  # noqa: F401

# Stages in order, with their share of the whole run (inference dominates).
STAGES = {
    "load": ("Loading the volume", 0.03),
    "preprocess": ("Preprocessing", 0.04),
    "inference": ("Sampling the model", 0.80),
    "postprocess": ("Maps and scores", 0.08),
    "write": ("Writing results", 0.05),
}
EXIT_CANCELLED = CancelledError.exit_code
CANCELLED_MESSAGE = "Cancelled."
# Forward passes per litre of field of view per second, bundled UNet at 3 mm, measured on a 2-core x86_64 CPU.
CPU_SECONDS_PER_PASS_LITRE = 0.05
# The backend and precision combos' tooltips (README "Inference backends"; the guard is inference/backends/choice.py's).
BACKEND_TOOLTIP = (
    "What computes a card model's forward passes. torch: the reference. openvino, onnxruntime: CPU runtimes "
    "running the model's exported graph with the same dropout masks (maps equal to torch's up to float "
    "rounding). auto: probes each installed backend and precision once per machine and model on one window, "
    "caches the outcome, and takes the fastest whose max |Δp| against torch fp32 is at most 0.01 (else "
    "torch fp32). nnU-Net and MONAI bundle models always run on torch.")
PRECISION_TOOLTIP = (
    "fp32; bf16 (torch CPU autocast or OpenVINO bf16: faster on CPUs with AVX-512 BF16 or AMX, and less exact: "
    "max |Δp| 0.01-0.02 on the bundled model's probe window); fp16 (torch on a GPU only). auto: fp16 on a GPU, "
    "else fp32; with backend auto, the probe also tries bf16 where the CPU computes it natively.")


@dataclass(frozen=True)
class Progress:
    stage: str
    label: str
    fraction: float  # within the stage, 0-1
    overall: float  # whole run, 0-1
    message: str
    elapsed_s: float


def parse_line(line: str) -> Progress | None:
    """A Progress for a JSON progress line; None for any line it cannot read as one (log text, or a JSON
    object whose stage is not a string or whose fraction or elapsed_s is not a finite number)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
        stage, fraction = data["stage"], float(data["fraction"])
        elapsed_s = float(data.get("elapsed_s", 0.0))
    except (ValueError, KeyError, TypeError, AttributeError):  # AttributeError: a JSON list, not an object
        return None
    if not isinstance(stage, str) or not (math.isfinite(fraction) and math.isfinite(elapsed_s)):
        return None
    names = list(STAGES)
    done = sum(STAGES[s][1] for s in names[: names.index(stage)]) if stage in STAGES else 0.0
    share = STAGES.get(stage, (stage, 0.0))[1]
    return Progress(stage=stage, label=STAGES.get(stage, (stage,))[0], fraction=fraction,
                    overall=min(1.0, done + share * fraction), message=str(data.get("message", "")),
                    elapsed_s=elapsed_s)


def error_message(log_lines: list[str], return_code: int) -> str:
    """The one-line reason a run failed, from its log (the command line's 'error:' line when present)."""
    if return_code == EXIT_CANCELLED:
        return CANCELLED_MESSAGE
    for line in reversed(log_lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    tail = next((line for line in reversed(log_lines) if line.strip()), "")
    return f"The segmentation process stopped with exit code {return_code}. {tail}".strip()


def segment_command(python: str, input_path: str, out_dir: str, model: str = "brainmask-t1",
                    method: str = DEFAULT_METHOD, samples: int | None = None, device: str = "auto",
                    seed: int = 0, backend: str = DEFAULT_BACKEND, precision: str = "auto") -> list[str]:
    """Arguments that run the segmentation with JSON progress in a separate Python process."""
    if method not in METHOD_LABELS:
        raise ValueError(f"Unknown method '{method}'; choose from {list(METHOD_LABELS)}")
    if device not in DEVICES:
        raise ValueError(f"Unknown device '{device}'; choose from {DEVICES}")
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend '{backend}'; choose from {BACKENDS}")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision '{precision}'; choose from {PRECISIONS}")
    args = [python, "-m", "SegUncertaintyLib.cli", "segment", input_path, "--out", out_dir, "--model", model,
            "--method", method, "--device", device, "--backend", backend, "--precision", precision,
            "--seed", str(seed), "--progress", "json", "--no-overview"]
    if samples is not None:
        args += ["--samples", str(int(samples))]
    return args


def cpu_estimate_s(fov_litres: float, passes: int) -> float:
    """A rough CPU time for a run, in seconds (see CPU_SECONDS_PER_PASS_LITRE); GPUs are far faster."""
    return 2.0 + CPU_SECONDS_PER_PASS_LITRE * passes * max(fov_litres, 0.0)


def describe_estimate(seconds: float) -> str:
    return f"about {math.ceil(seconds)} s" if seconds < 90 else f"about {math.ceil(seconds / 60)} min"


# How the manifest's inference.chosen_by reads in the results line (inference/backends/choice.py's values)
CHOSEN_BY = {"probe": "chosen by the probe", "cached probe": "chosen by this machine's cached probe",
             "no other candidate": "auto: no other backend for this model here", "cuda": "on the GPU",
             "requested": ""}


def backend_line(manifest: dict) -> str:
    """What ran a run's forward passes, from its manifest's ``inference`` entry (card models), as one line, e.g.
    "Ran on openvino fp32 (max |Δp| 2.2e-05 against torch fp32; chosen by the probe)". max |Δp| is the
    accuracy guard's figure: over the probe window's voxels, classes and members. Empty when the manifest
    has no such entry (nnU-Net and MONAI bundle models, runs of older versions)."""
    entry = manifest.get("inference") if isinstance(manifest, dict) else None
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("backend", "precision")):
        return ""
    dp = entry.get("max_abs_dp")
    if (entry["backend"], entry["precision"]) == ("torch", "fp32"):
        detail = "the reference"
    elif isinstance(dp, (int, float)) and not isinstance(dp, bool) and math.isfinite(dp):
        detail = f"max |Δp| {dp:.2g} against torch fp32"
    else:
        detail = "not compared with torch fp32"
    how = CHOSEN_BY.get(entry.get("chosen_by"), str(entry.get("chosen_by") or ""))
    return f"Ran on {entry['backend']} {entry['precision']} ({'; '.join(filter(None, [detail, how]))})"
