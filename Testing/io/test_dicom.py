"""DICOM folders: every series found (nested folders too), never silently one of several, broken slices
refused; a good series reads back with its exact voxels and geometry."""

import numpy as np
import pytest
import SimpleITK as sitk

from SegUncertaintyLib.core.errors import InputImageError
from SegUncertaintyLib.io.dicom import SERIES_UID_TAG
from SegUncertaintyLib.io.images import read_image
from Testing.support.dicom_series import volume, write_series

pytestmark = pytest.mark.dicom

OBLIQUE = np.array(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())


def test_series_reads_back_with_its_voxels_and_oblique_geometry(tmp_path):
    array = volume()
    write_series(tmp_path / "ct", array, "1.2.3.1", direction=OBLIQUE, spacing=(0.8, 0.9, 2.0))
    image = read_image(tmp_path / "ct")
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    assert np.allclose(image.GetSpacing(), (0.8, 0.9, 2.0)) and np.allclose(image.GetOrigin(), (-10, -20, 30))
    assert np.allclose(image.GetDirection(), OBLIQUE.flatten(), atol=1e-5)
    assert image.GetMetaData(SERIES_UID_TAG) == "1.2.3.1"


def test_two_series_in_one_folder_are_listed_and_one_is_chosen_by_uid(tmp_path):
    a, b = volume(seed=1), volume(seed=2)
    write_series(tmp_path / "mixed", a, "1.2.3.1", "T1 MPRAGE", prefix="A")
    write_series(tmp_path / "mixed", b, "1.2.3.2", "T2 FLAIR", prefix="B", origin=(0, 0, 100))
    with pytest.raises(InputImageError) as info:
        read_image(tmp_path / "mixed")
    message = str(info.value)
    assert "2 DICOM series" in message and "--series" in message and "\n" not in message
    for text in ("1.2.3.1", "'T1 MPRAGE'", "1.2.3.2", "'T2 FLAIR'", "6 files", "kB"):
        assert text in message
    chosen = read_image(tmp_path / "mixed", series="1.2.3.2")
    assert np.array_equal(sitk.GetArrayFromImage(chosen), b) and chosen.GetOrigin()[2] == pytest.approx(100)
    with pytest.raises(InputImageError, match="No DICOM series 9.9.9 .*1.2.3.1"):
        read_image(tmp_path / "mixed", series="9.9.9")


@pytest.mark.pacs
def test_nested_pacs_export_is_searched(tmp_path):
    array = volume()
    write_series(tmp_path / "export" / "PATIENT1" / "STUDY1" / "SERIES1", array, "1.2.3.1")
    image = read_image(tmp_path / "export")
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    write_series(tmp_path / "export" / "PATIENT1" / "STUDY1" / "SERIES2", array, "1.2.3.2")
    with pytest.raises(InputImageError, match="2 DICOM series"):
        read_image(tmp_path / "export")


@pytest.mark.parametrize("kind, message", [
    ("missing_middle", "slice gap of 4 mm after slice 3 of 5 where the median is 2 mm"),
    ("non_uniform", "median is 2 mm"),
    ("duplicate", "same position"),
    ("tilted", "gantry tilt"),
    ("truncated_middle", "IM0002.dcm .*truncated or corrupt"),
    ("truncated_last", "IM0005.dcm .*truncated or corrupt"),
])
def test_broken_series_is_refused(kind, message, tmp_path):
    array, folder = volume(), tmp_path / kind
    if kind == "missing_middle":
        write_series(folder, array, "1.2.3.1", skip={3})
    elif kind == "non_uniform":
        write_series(folder, array, "1.2.3.1", positions=[(-10, -20, z) for z in (0, 2, 4, 6, 8.5, 10.5)])
    elif kind == "duplicate":
        write_series(folder, array, "1.2.3.1", positions=[(-10, -20, 2 * min(k, 4)) for k in range(6)])
    elif kind == "tilted":
        write_series(folder, array, "1.2.3.1", positions=[(-10, -20 + 0.7 * k, 2 * k) for k in range(6)])
    else:
        files = write_series(folder, array, "1.2.3.1")
        victim = files[2 if kind == "truncated_middle" else 5]
        victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(InputImageError, match=message):
        read_image(folder)


def test_segment_records_the_chosen_series_in_the_manifest(tmp_path, threshold_model):
    from SegUncertaintyLib import cli
    from Testing.support.files import load_json
    from Testing.support.phantoms import sphere_phantom

    sphere = sitk.GetArrayFromImage(sphere_phantom(size=(20, 18, 16), spacing=(3.0, 3.0, 3.0)))
    write_series(tmp_path / "study" / "s1", np.zeros_like(sphere, np.int16) + np.arange(16)[:, None, None], "1.2.3.1",
                 spacing=(3.0, 3.0, 3.0))
    write_series(tmp_path / "study" / "s2", (sphere > 0.5).astype(np.int16), "1.2.3.2", spacing=(3.0, 3.0, 3.0))
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "study"), "--series", "1.2.3.2", "--model", str(threshold_model),
                     "--method", "softmax", "--out", str(out), "--progress", "none", "--no-overview"]) == 0
    manifest = load_json(out / "manifest.json")
    assert manifest["settings"]["dicom_series"] == "1.2.3.2"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    assert np.array_equal(labels, (sphere > 0.5).astype(np.uint8))  # the sphere series, not the ramp
