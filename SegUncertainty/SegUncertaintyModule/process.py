"""The background run of the library's command line: its arguments, and its progress lines read back.

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
from SegUncertaintyLib.core.options import DEVICES  # noqa: F401

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
                    seed: int = 0) -> list[str]:
    """Arguments that run the segmentation with JSON progress in a separate Python process."""
    if method not in METHOD_LABELS:
        raise ValueError(f"Unknown method '{method}'; choose from {list(METHOD_LABELS)}")
    if device not in DEVICES:
        raise ValueError(f"Unknown device '{device}'; choose from {DEVICES}")
    args = [python, "-m", "SegUncertaintyLib.cli", "segment", input_path, "--out", out_dir, "--model", model,
            "--method", method, "--device", device, "--seed", str(seed), "--progress", "json", "--no-overview"]
    if samples is not None:
        args += ["--samples", str(int(samples))]
    return args


def cpu_estimate_s(fov_litres: float, passes: int) -> float:
    """A rough CPU time for a run, in seconds (see CPU_SECONDS_PER_PASS_LITRE); GPUs are far faster."""
    return 2.0 + CPU_SECONDS_PER_PASS_LITRE * passes * max(fov_litres, 0.0)


def describe_estimate(seconds: float) -> str:
    return f"about {math.ceil(seconds)} s" if seconds < 90 else f"about {math.ceil(seconds / 60)} min"
