"""Geometry: outputs land on the input's exact grid, and the model-space round trip preserves anatomy."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.preprocessing import model_grid, orientation_direction, to_input_space, to_model_space
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models.card import load_card
from SegUncertaintyLib.models.loader import load_model
from Testing.support.phantoms import sphere_phantom

OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())  # a rotated, non-axis-aligned grid
LPS_FLIP = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)  # a DICOM-like LPS-axis volume


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def test_orientation_codes_name_the_direction_axes_point_to():
    assert np.allclose(orientation_direction("RAS"), np.diag([-1, -1, 1]))  # ITK is LPS
    assert np.allclose(orientation_direction("LPS"), np.eye(3))
    with pytest.raises(ValueError):
        orientation_direction("RRS")


@pytest.mark.parametrize("direction", [None, OBLIQUE, LPS_FLIP])
def test_model_space_round_trip_keeps_the_image(direction, threshold_model):
    image = sphere_phantom(direction=direction)
    card = load_card(threshold_model)
    array, grid = to_model_space(image, card)
    assert np.allclose(grid.GetSpacing(), card.spacing_mm)
    assert np.allclose(np.array(grid.GetDirection()).reshape(3, 3), orientation_direction("RAS"))
    back = to_input_space(array, grid, image)
    assert same_geometry(back, image)
    a, b = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(back)
    inner = (slice(3, -3),) * 3  # away from the resampled grid's border
    assert np.abs(a[inner] - b[inner]).mean() < 0.02
    assert np.abs(a[inner] - b[inner]).max() < 0.2


def test_model_grid_covers_the_whole_input():
    image = sphere_phantom(direction=OBLIQUE)
    grid = model_grid(image, (3.0, 3.0, 3.0), "RAS")
    size = np.array(image.GetSize()) - 1
    for corner in np.array(np.meshgrid(*[[0, 1]] * 3)).reshape(3, -1).T * size:
        point = image.TransformIndexToPhysicalPoint([int(c) for c in corner])
        index = np.array(grid.TransformPhysicalPointToContinuousIndex(point))
        assert np.all(index >= -0.5) and np.all(index <= np.array(grid.GetSize()) - 0.5)


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_segmentation_on_input_grid_has_the_analytic_volume_and_centre(direction, threshold_model):
    radius = 25.0
    image = sphere_phantom(direction=direction, radius_mm=radius, blur_mm=2.0)
    out = segment_image(image, load_model(threshold_model), SegmentOptions(method="softmax", overlap=0.5))
    for result in [out.segmentation, *out.probabilities.values(), *out.maps.values()]:
        assert same_geometry(result, image)
    labels = sitk.GetArrayFromImage(out.segmentation)
    volume_mm3 = labels.sum() * math.prod(image.GetSpacing())
    assert volume_mm3 == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.05)
    scores = out.scores["classes"]["sphere"]
    assert scores["segmentation_volume_ml"] == pytest.approx(volume_mm3 / 1000)
    # softmax: one sample, so the model-grid estimate is its own interval, near the analytic volume
    assert scores["volume_ml_interval95"] == [scores["volume_ml"]] * 2
    assert scores["volume_ml"] == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.05)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(out.segmentation)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    assert np.allclose(stats.GetCentroid(1), centre, atol=1.0)
