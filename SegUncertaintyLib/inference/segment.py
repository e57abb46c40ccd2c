"""The one entry point of a segmentation run: validate, then the sliding window or the whole-volume path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

from ..core.errors import InputImageError
from ..core.options import SegmentOptions
from ..core.progress import ProgressCallback
from ..io.images import validate_image
from ..models.loader import LoadedModel
from .assembly import SegmentationOutputs
from .model_grid import segment_on_model_grid
from .whole_volume import segment_whole_volume


def segment_image(image: sitk.Image, model, options: SegmentOptions | None = None,
                  progress: ProgressCallback | None = None, cancelled: Callable[[], bool] | None = None,
                  scratch: str | Path | None = None) -> SegmentationOutputs:
    """Segment a 3D image with uncertainty; every output has ``image``'s geometry.

    ``model``: a card model (models.loader.LoadedModel: sliding window on the model's grid) or a
    whole-volume model (nnU-Net, MONAI bundle: models/adapters/base.py). ``options``: the method, samples,
    overlap, device, seed and batch (SegmentOptions; its output fields are write_outputs'). The image is
    validated as the command line does (InputImageError: not 3D, NaN/inf voxels, constant); options out of
    range raise UsageError (a ValueError). ``cancelled`` is polled between stages and forward passes
    (CancelledError). ``scratch``: for whole-volume models, a folder where large intermediate data and the
    output volumes are kept as files (read when looked up; the folder must outlive the outputs): the peak
    memory is then the running sums, not every map at once. Card models keep their outputs in memory.
    """
    options = (options or SegmentOptions()).check()
    if not isinstance(image, sitk.Image):
        raise InputImageError(f"segment_image needs a SimpleITK image (with its geometry), got {type(image).__name__}")
    image = validate_image(image, "input image")
    report = progress or (lambda *_: None)
    if isinstance(model, LoadedModel):
        return segment_on_model_grid(image, model, options, report, cancelled)
    return segment_whole_volume(image, model, options, report, cancelled, scratch)
