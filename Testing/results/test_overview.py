"""The overview's slices in Slicer's radiological convention, whatever the grid's orientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib.results.overview import class_colours
from SegUncertaintyLib.results.overview_slices import views

LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
SAGITTAL_STACK = (0, 0, 1, 1, 0, 0, 0, -1, 0)  # voxel x -> P, y -> -S (I), z -> L: slices stacked left-right


def marked_image(direction) -> tuple[sitk.Image, tuple[int, int, int]]:
    """A 20 x 16 x 12 image with one bright voxel left, anterior and superior of the centre (LPS +x, -y, +z)."""
    image = sitk.Image([20, 16, 12], sitk.sitkFloat32)
    image.SetDirection(direction)
    image.SetSpacing((1.0, 1.5, 2.0))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([9.5, 7.5, 5.5]))
    target = centre + np.array([8.0, -8.0, 8.0])  # 8 mm to the left, anterior, superior
    index = image.TransformPhysicalPointToIndex(target.tolist())
    image[index] = 1.0
    return image, tuple(reversed(index))


@pytest.mark.parametrize("direction", [LPS, RAS, SAGITTAL_STACK], ids=["LPS", "RAS", "sagittal stack"])
def test_the_left_anterior_superior_voxel_lands_where_slicer_shows_it(direction):
    image, mark = marked_image(direction)
    array = sitk.GetArrayFromImage(image)
    where = {}
    for view in views(image):
        plane = view.cut(array, mark)
        row, column = np.argwhere(plane == 1.0)[0]
        where[view.name] = (row / (plane.shape[0] - 1) > 0.5, column / (plane.shape[1] - 1) > 0.5)  # (top, right)
        assert view.letters[0] + view.letters[1] in ("LR", "PA")  # right edge, then left edge
    assert where["Axial"] == (True, True)  # anterior up, patient's left on the right
    assert where["Coronal"] == (True, True)  # superior up, left on the right
    assert where["Sagittal"] == (True, False)  # superior up, anterior on the left
    letters = {v.name: v.letters for v in views(image)}
    assert letters == {"Axial": ("L", "R", "A", "P"), "Coronal": ("L", "R", "S", "I"),
                       "Sagittal": ("P", "A", "S", "I")}


def test_pixel_aspect_follows_the_spacing_of_the_screen_axes():
    image, _ = marked_image(LPS)  # spacing x 1, y 1.5, z 2
    aspects = {v.name: v.aspect for v in views(image)}
    assert aspects == {"Axial": 1.5, "Coronal": 2.0, "Sagittal": pytest.approx(2.0 / 1.5)}


def test_class_colours_come_from_the_card_else_a_palette():
    colours = class_colours({0: "background", 1: "liver", 2: "spleen"}, {"1": {"color": [0.9, 0.5, 0.4]}})
    assert colours[1] == ("liver", (0.9, 0.5, 0.4)) and colours[2][0] == "spleen" and len(colours[2][1]) == 3
    assert 0 not in colours


def test_the_written_overview_draws_each_class_in_its_cards_colour(tmp_path, threshold_model):
    """write_outputs passes the card's terminology colours to the overview (before, the palette's)."""
    import dataclasses

    import matplotlib.image

    from SegUncertaintyLib.core.options import SegmentOptions
    from SegUncertaintyLib.inference.segment import segment_image
    from SegUncertaintyLib.models.loader import load_model
    from SegUncertaintyLib.results.run_folder import write_outputs
    from Testing.support.phantoms import sphere_phantom

    model = load_model(threshold_model)
    outputs = segment_image(sphere_phantom(), model, SegmentOptions(method="ensemble"))
    magenta = {"1": {"color": [1.0, 0.0, 1.0]}}
    description = dataclasses.replace(model.description, info={**model.description.info, "terminology": magenta})
    write_outputs(outputs, tmp_path / "out", description, "/some/machine/path/phantom.nii.gz")
    pixels = matplotlib.image.imread(str(tmp_path / "out" / "overview.png"))[..., :3]
    assert (np.abs(pixels - [1.0, 0.0, 1.0]).max(axis=-1) < 0.02).sum() > 20
