"""The module's parameter node: what the panel shows, saved with the scene."""

from __future__ import annotations

from typing import Annotated

from SegUncertaintyMRML import overlays, regions
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from . import process

MAPS = ["entropy", "mutual_information", "variance"]


@parameterNodeWrapper
class SegUncertaintyParameterNode:
    """What the panel shows; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = "brainmask-t1"
    method: Annotated[str, Choice(list(process.METHOD_LABELS))] = process.DEFAULT_METHOD
    samples: Annotated[int, WithinRange(2, 100)] = 10
    device: Annotated[str, Choice(list(process.DEVICES))] = "auto"
    backend: Annotated[str, Choice(list(process.BACKENDS))] = process.DEFAULT_BACKEND  # torch for whole-volume models
    precision: Annotated[str, Choice(list(process.PRECISIONS))] = "auto"
    segmentation: vtkMRMLSegmentationNode
    uncertaintyMap: Annotated[str, Choice(MAPS)] = "entropy"
    colormap: Annotated[str, Choice(list(overlays.COLORMAPS))] = "Inferno"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    threshold: Annotated[float, WithinRange(0.0, 10.0)] = 0.5  # nats or probability units; ln K <= 10
    regionOrder: Annotated[str, Choice(list(regions.ORDERS))] = "largest"
    minRegionMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.05
