"""What the commands share: the one-line argparse parser, the cancel flag, the segment options (``segment``,
``cohort``) and small parsers of option values."""

from __future__ import annotations

import argparse
import signal

from ..core.errors import CancelledError, UsageError
from ..core.options import BACKENDS, DEFAULT_BACKEND, DEVICES, PRECISIONS, SEG_TYPES
from ..core.vocabulary import DEFAULT_METHOD, DEFAULT_MODEL, MAP_CHOICES, MAP_DTYPES, METHODS, OUTPUT_FORMATS


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), as every other error of the command line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


class CancelFlag:
    """Set by SIGTERM/SIGINT (handlers installed for the life of the object, then restored).

    Polled before and after every forward pass, between pipeline stages and between written files.
    """

    def __init__(self):
        self.set = False
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, *_):
        self.set = True

    def __call__(self) -> bool:
        return self.set

    def check(self) -> None:
        if self.set:
            raise CancelledError()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend and --precision of card models' forward passes (segment, cohort, calibrate)."""
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                        help="card models' forward passes: auto picks the fastest backend whose probe on one window "
                             "stays within 0.01 of torch fp32's probabilities (cached per machine and model); "
                             "openvino and onnxruntime run on the CPU (default: %(default)s)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: fp16 autocast with torch on CUDA, else fp32 (with --backend auto, every "
                             "precision the CPU runs natively is probed); bf16: CPU autocast or OpenVINO; fp16: "
                             "CUDA only (default: %(default)s)")


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """The model, method, sampling, output and progress options of ``segment`` (and ``cohort``)."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name, card path, nnU-Net v2 trained-model folder or MONAI bundle folder "
                             "(default: %(default)s)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help="uncertainty method: one pass (softmax), MC dropout, ensemble, test-time flips or a "
                             "combination (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per member: MC dropout passes (default 20) or TTA flip combinations "
                             "(default: all the model declares, at most 8)")
    parser.add_argument("--format", default="nrrd", choices=OUTPUT_FORMATS,
                        help="image format of the written volumes (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: a CUDA GPU when there is one, else the CPU; cuda: exit 2 when there is none "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the dropout masks: the same seed gives the same outputs "
                             "(default: %(default)s)")
    add_backend_options(parser)
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="sliding-window overlap in [0, 1) (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="samples per forward pass (memory budget; default: %(default)s)")
    parser.add_argument("--progress", default="bar", choices=("bar", "json", "none"),
                        help="bar: on stderr (plain lines when stderr is not a terminal); json: one JSON line "
                             "per step on stdout, for programs (default: %(default)s)")
    parser.add_argument("--no-overview", action="store_true", help="skip the overview PNG")
    parser.add_argument("--maps", type=parse_maps, default=None, metavar="NAME[,NAME...]",
                        help=f"maps to write, from {','.join(MAP_CHOICES)} (probability: every class's probability "
                             "map; default: all); the segmentation and scores are always written")
    parser.add_argument("--map-dtype", default="float32", choices=MAP_DTYPES,
                        help="precision of the maps and probabilities: float16 rounds each value to ~3 significant "
                             "digits (steps of at most 0.0005 on 0-1 maps), stored as float32, compressing "
                             "better (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=None, metavar="E",
                        help="MC dropout: sample in rounds until the maps' Monte Carlo error (99th percentile near "
                             "the segment, scores.json monte_carlo_error) is at most E; --samples is then the "
                             "maximum (default: a fixed --samples)")
    parser.add_argument("--compress", action=argparse.BooleanOptionalAction, default=None,
                        help="gzip every written volume (--compress) or none (--no-compress); default: the "
                             "labelmaps and --map-dtype float16 maps only (gzip makes float32 maps about 10 %% "
                             "smaller and their writing about 50x slower)")
    parser.add_argument("--save-samples", action="store_true",
                        help="also write the per-sample segmentations (bit-packed .npz; for evaluate's GED)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write DICOM SEG, Parametric Maps and a TID 1500 report in dicom/ (the input must "
                             "be a DICOM series; README 'Hospital use')")
    parser.add_argument("--seg-type", default="binary", choices=SEG_TYPES,
                        help="with --dicom: the segmentation as a BINARY SEG (one frame set per class) or a "
                             "LABELMAP SEG (one labelmap, DICOM 2024) (default: %(default)s)")
    parser.add_argument("--calibration", default="auto", metavar="auto|none|FILE",
                        help="auto: the newest calibration made by 'calibrate' for these weights, method and "
                             "samples (never another); none: off; or a calibration file (default: %(default)s)")


def parse_maps(text: str) -> tuple[str, ...]:
    """``entropy,probability`` -> ("entropy", "probability"); argparse error (exit 2) on an unknown or
    repeated name, or none."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MAP_CHOICES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--maps expects distinct names from {','.join(MAP_CHOICES)}, got '{text}'")
    return names


def plural(n: int, noun: str) -> str:
    """``1 sample``, ``2 samples``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
