"""The options of one segmentation run, shared by ``segment`` and ``cohort`` (one definition each).

Torch-free: the command line checks them before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import UsageError
from .methods import DEFAULT_METHOD, parse_method, plan_samples
from .vocabulary import DEFAULT_MODEL, MAP_CHOICES, MAP_DTYPES, OUTPUT_FORMATS

DEVICES = ("auto", "cuda", "cpu")  # auto: CUDA when available
# auto: the fastest backend whose probe passes the accuracy guard (inference/backends/choice.py)
BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: fp16 autocast with torch on CUDA, else fp32
# what each backend runs (fp16: torch on CUDA only; the exported backends run on the CPU)
BACKEND_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "openvino": ("fp32", "bf16"), "onnxruntime": ("fp32",)}
DEFAULT_BACKEND = "torch"  # the reference; auto is opt-in (BENCHMARKS.md "Inference backends" says why)
SEG_TYPES = ("binary", "labelmap")  # --seg-type: the DICOM SEG of the segmentation (results/dicom_objects.py)


def check_overlap_range(overlap: float) -> None:
    """UsageError unless 0 <= overlap < 1 (the sliding window also checks the stride it leaves)."""
    if not 0.0 <= overlap < 1.0:  # also refuses NaN
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")


@dataclass(frozen=True)
class SegmentOptions:
    """Model, method, sampling and output options (the command line's names, without dashes)."""

    model: str = DEFAULT_MODEL
    method: str = DEFAULT_METHOD
    samples: int | None = None  # None: the method's default
    overlap: float = 0.5
    device: str = "auto"
    seed: int = 0
    max_batch: int = 8
    format: str = "nrrd"
    maps: tuple[str, ...] | None = None  # None: every map; (): only the segmentation and scores
    map_dtype: str = "float32"
    overview: bool = True
    save_samples: bool = False
    dicom: bool = False  # also the DICOM objects (results/dicom_objects.py); the input must be a DICOM series
    seg_type: str = "binary"  # with dicom: the segmentation as a BINARY or a LABELMAP SEG
    calibration: str = "auto"  # auto: the newest calibration for these weights + method + samples; none; a file
    tolerance: float | None = None  # MC dropout: sample in rounds until the maps' Monte Carlo error is <= this
    compress: bool | None = None  # gzip the volumes: True all, False none, None labelmaps and float16 maps only
    backend: str = DEFAULT_BACKEND  # card models' forward passes: BACKENDS
    precision: str = "auto"  # PRECISIONS
    temperature: float = 1.0  # every pass's logits are divided by this before the softmax (a calibration's t)

    @classmethod
    def from_args(cls, args) -> SegmentOptions:
        return cls(model=args.model, method=args.method, samples=args.samples, overlap=args.overlap,
                   device=args.device, seed=args.seed, max_batch=args.max_batch, format=args.format,
                   maps=tuple(args.maps) if args.maps else None, map_dtype=args.map_dtype,
                   overview=not args.no_overview, save_samples=args.save_samples,
                   dicom=getattr(args, "dicom", False), seg_type=getattr(args, "seg_type", "binary"),
                   calibration=getattr(args, "calibration", "auto"),
                   compress=getattr(args, "compress", None), tolerance=getattr(args, "tolerance", None),
                   backend=getattr(args, "backend", DEFAULT_BACKEND), precision=getattr(args, "precision", "auto"))

    def check(self) -> SegmentOptions:
        """Refuse options out of range before anything is read (UsageError, exit 2); return ``self``."""
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise UsageError(f"--max-batch must be at least 1, got {self.max_batch}")
        check_overlap_range(self.overlap)
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        self.check_backend()
        if self.format not in OUTPUT_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if self.map_dtype not in MAP_DTYPES:
            raise UsageError(f"--map-dtype must be one of {', '.join(MAP_DTYPES)}, got {self.map_dtype!r}")
        if self.maps is not None and not set(self.maps) <= set(MAP_CHOICES):
            raise UsageError(f"--maps must name maps from {','.join(MAP_CHOICES)}, got {self.maps!r}")
        if self.seg_type not in SEG_TYPES:
            raise UsageError(f"--seg-type must be one of {', '.join(SEG_TYPES)}, got {self.seg_type!r}")
        if self.seg_type != "binary" and not self.dicom:
            raise UsageError(f"--seg-type {self.seg_type} is the DICOM SEG's type: it needs --dicom")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
                0 < self.temperature < math.inf):  # also refuses NaN
            raise UsageError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        plan_samples(self.method, 2, self.samples)  # sample-count rules (the member count is checked later)
        if self.tolerance is not None:
            if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):  # also refuses NaN
                raise UsageError(f"--tolerance must be in (0, 1), got {self.tolerance}")
            if not parse_method(self.method).dropout:
                raise UsageError(f"--tolerance needs random samples (a method with mc_dropout), not {self.method}")
        return self

    def check_backend(self) -> None:
        """UsageError unless the backend and precision are known and go together (and with the device)."""
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and self.device == "cpu":
            raise UsageError("--precision fp16 runs on CUDA only (autocast); on the CPU use fp32 or bf16")
        if self.backend in ("openvino", "onnxruntime"):
            if self.device == "cuda":
                raise UsageError(f"--backend {self.backend} runs on the CPU; use --device cpu or auto, "
                                 "or --backend torch")
            if self.precision != "auto" and self.precision not in BACKEND_PRECISIONS[self.backend]:
                raise UsageError(f"--backend {self.backend} runs {', '.join(BACKEND_PRECISIONS[self.backend])}, "
                                 f"not --precision {self.precision}")

    def settings(self, dicom_series: str | None) -> dict:
        """The manifest's ``settings`` as ``segment`` writes them (``dicom`` only when set and ``compress`` only
        when chosen, ``seg_type`` only when not binary, so earlier runs' settings, a cohort's resume key, stay as
        they were)."""
        return {**({"dicom": True} if self.dicom else {}),
                **({"seg_type": self.seg_type} if self.seg_type != "binary" else {}),
                **({} if self.compress is None else {"compress": self.compress}),
                **({"tolerance": self.tolerance} if self.tolerance is not None else {}),
                **({"backend": self.backend} if self.backend != DEFAULT_BACKEND else {}),
                **({"precision": self.precision} if self.precision != "auto" else {}),
                "overlap": self.overlap, "seed": self.seed,
                "max_batch": self.max_batch, "device_requested": self.device, "format": self.format,
                "maps": list(self.maps or MAP_CHOICES), "map_dtype": self.map_dtype, "dicom_series": dicom_series}

    def as_dict(self) -> dict:
        return asdict(self)
