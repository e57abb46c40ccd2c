"""The background run of the library's command line: its arguments, and its progress lines read back.

``seguncertainty segment --progress json`` prints one JSON object per line on stdout:
{"stage", "fraction", "message", "elapsed_s"}; everything else it prints is log text. Exit codes are
the command line's (0 ok, 130 cancelled, others errors with a one-line message).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

# Stages in order, with their share of the whole run (inference dominates).
STAGES = {
    "load": ("Loading the volume", 0.03),
    "preprocess": ("Preprocessing", 0.04),
    "inference": ("Sampling the model", 0.80),
    "postprocess": ("Maps and scores", 0.08),
    "write": ("Writing results", 0.05),
}
METHODS = {"softmax": "Softmax (one pass)", "mc_dropout": "MC dropout", "ensemble": "Ensemble",
           "tta": "Test-time augmentation", "ensemble+mc_dropout": "Ensemble + MC dropout",
           "ensemble+tta": "Ensemble + TTA"}
DEVICES = ("auto", "cuda", "cpu")
EXIT_CANCELLED = 130
CANCELLED_MESSAGE = "Cancelled."
# Forward passes per litre of field of view per second, bundled UNet at 3 mm, measured on a 2-core x86_64 CPU.
CPU_SECONDS_PER_PASS_LITRE = 0.05


@dataclass(frozen=True)
class Progress:
    stage: str
    label: str
    fraction: float  # within the stage, 0-1
    overall: float  # whole run, 0-1
    message: str
    elapsed_s: float


def parse_line(line: str) -> Progress | None:
    """A Progress for a JSON progress line; None for any other (log) line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
        stage, fraction = data["stage"], float(data["fraction"])
    except (ValueError, KeyError, TypeError):
        return None
    names = list(STAGES)
    done = sum(STAGES[s][1] for s in names[: names.index(stage)]) if stage in STAGES else 0.0
    share = STAGES.get(stage, (stage, 0.0))[1]
    return Progress(stage=stage, label=STAGES.get(stage, (stage,))[0], fraction=fraction,
                    overall=min(1.0, done + share * fraction), message=str(data.get("message", "")),
                    elapsed_s=float(data.get("elapsed_s", 0.0)))


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
                    method: str = "ensemble+mc_dropout", samples: int | None = None, device: str = "auto",
                    seed: int = 0) -> list[str]:
    """Arguments that run the segmentation with JSON progress in a separate Python process."""
    if method not in METHODS:
        raise ValueError(f"Unknown method '{method}'; choose from {list(METHODS)}")
    if device not in DEVICES:
        raise ValueError(f"Unknown device '{device}'; choose from {DEVICES}")
    args = [python, "-m", "SegUncertaintyLib.cli", "segment", input_path, "--out", out_dir, "--model", model,
            "--method", method, "--device", device, "--seed", str(seed), "--progress", "json", "--no-overview"]
    if samples is not None:
        args += ["--samples", str(int(samples))]
    return args


MAX_TTA_FLIPS = 8  # the library's default TTA sample count: every declared flip combination, at most 8


def samples_argument(method: str, samples: int) -> int | None:
    """What the panel passes as ``--samples``: MC dropout passes per member; None for the other methods,
    so TTA uses every flip combination the model declares (a fixed count could exceed them)."""
    return int(samples) if "mc_dropout" in method.split("+") else None


def forward_passes(method: str, samples: int | None, members: int, flip_axes=(0, 1, 2)) -> int | None:
    """Forward passes per sliding window, counted as the library plans them (core.methods.plan_samples,
    which needs torch: this count must not); None where the library refuses the combination.

    samples: MC dropout passes (default 20) or TTA flip combinations (default: all declared, at most 8) per
    member; members: ensemble size; flip_axes: the (z, y, x) axes the model declares for TTA."""
    parts = method.split("+")
    if method not in METHODS or (samples is not None and samples < 1):
        return None
    if "ensemble" in parts and members < 2:
        return None
    per_member = 1
    if "mc_dropout" in parts:
        per_member = 20 if samples is None else samples
        if per_member < 2:
            return None
    elif "tta" in parts:
        flips = 2 ** len(set(flip_axes))
        per_member = min(MAX_TTA_FLIPS, flips) if samples is None else samples
        if flips < 2 or not 2 <= per_member <= flips:
            return None
    return per_member * (members if "ensemble" in parts else 1)


def cpu_estimate_s(fov_litres: float, passes: int) -> float:
    """A rough CPU time for a run, in seconds (see CPU_SECONDS_PER_PASS_LITRE); GPUs are far faster."""
    return 2.0 + CPU_SECONDS_PER_PASS_LITRE * passes * max(fov_litres, 0.0)


def describe_estimate(seconds: float) -> str:
    return f"about {math.ceil(seconds)} s" if seconds < 90 else f"about {math.ceil(seconds / 60)} min"
