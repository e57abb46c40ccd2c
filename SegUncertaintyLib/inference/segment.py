"""The one entry point of a segmentation run: validate, then the sliding window or the whole-volume path."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import SimpleITK as sitk
import torch

from ..core.errors import CancelledError, InputImageError, UsageError
from ..core.options import SegmentOptions
from ..core.progress import ProgressCallback
from ..io.images import validate_image
from ..models.loader import LoadedModel
from .assembly import SegmentationOutputs
from .model_grid import segment_on_model_grid
from .whole_volume import segment_whole_volume


@contextlib.contextmanager
def cancel_between_modules(cancelled: Callable[[], bool] | None) -> Iterator[None]:
    """While inside, every ``torch.nn.Module`` call first polls ``cancelled`` (CancelledError when set): a
    signal handler that sets the flag runs between two layers, so a cancel takes effect within one layer's
    time, not a whole batched forward pass. A global forward pre-hook (torch), removed on exit; it changes
    no value. A TorchScript or ONNX network runs whole in C++: there the pass is the unit."""
    if cancelled is None:
        yield
        return

    def poll(module, args) -> None:
        if cancelled():
            raise CancelledError()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(poll)
    try:
        yield
    finally:
        handle.remove()


def segment_image(image: sitk.Image, model, options: SegmentOptions | None = None,
                  progress: ProgressCallback | None = None, cancelled: Callable[[], bool] | None = None,
                  scratch: str | Path | None = None) -> SegmentationOutputs:
    """Segment a 3D image with uncertainty; every output has ``image``'s geometry.

    ``model``: a card model (models.loader.LoadedModel: sliding window on the model's grid) or a
    whole-volume model (nnU-Net, MONAI bundle: models/adapters/base.py). ``options``: the method, samples,
    overlap, device, seed and batch (SegmentOptions; its output fields are write_outputs'). The image is
    validated as the command line does (InputImageError: not 3D, NaN/inf voxels, constant); options out of
    range raise UsageError (a ValueError). ``cancelled`` is polled between stages and forward passes
    (CancelledError), and between the network's layers (``cancel_between_modules``). ``scratch``: for
    whole-volume models, a folder where large intermediate data and the output volumes are kept as files
    (read when looked up; the folder must outlive the outputs): the peak memory is then the running sums,
    not every map at once. Card models keep their outputs in memory.
    """
    options = (options or SegmentOptions()).check()
    if not isinstance(image, sitk.Image):
        raise InputImageError(f"segment_image needs a SimpleITK image (with its geometry), got {type(image).__name__}")
    image = validate_image(image, "input image")
    report = progress or (lambda *_: None)
    with cancel_between_modules(cancelled):
        if isinstance(model, LoadedModel):
            outputs = segment_on_model_grid(image, model, options, report, cancelled)
        else:
            if options.backend not in ("torch", "auto") or options.precision not in ("auto", "fp32"):
                raise UsageError(f"--backend {options.backend} --precision {options.precision}: only card models "
                                 "choose a backend; nnU-Net and MONAI bundle models run on torch (use the defaults)")
            outputs = segment_whole_volume(image, model, options, report, cancelled, scratch)
    # the manifest's inference entry says which t divided the logits, also when the calibration that gave it was
    # then not applied (a --tolerance run that ended at another sample count), and the CPU threads: torch's
    # reductions round differently with another count, so the same seed reproduces a run bit for bit only with
    # the same threads (the command's count follows the free cores)
    outputs.inference = {**(outputs.inference or {}), "temperature": float(options.temperature),
                         "cpu_threads": torch.get_num_threads()}
    return outputs
