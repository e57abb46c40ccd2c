"""``cohort --dicom``: each DICOM case folder gets its dicom/ objects; an image-file case refuses the whole
cohort with exit 2 before any case runs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from SegUncertaintyLib import cli
from Testing.support.dicom_series import write_series
from Testing.support.phantoms import sphere_phantom

pytestmark = [pytest.mark.dicom, pytest.mark.slow]


def _series(folder, uid):
    array = np.round(sitk.GetArrayFromImage(sphere_phantom(size=(16, 14, 10), radius_mm=10.0)) * 1000)
    write_series(folder, array.astype(np.int16), uid, modality="CT")


def _cohort(model, out, *inputs):
    return cli.main(["cohort", *map(str, inputs), "--model", str(model), "--method", "mc_dropout", "--samples", "4",
                     "--progress", "none", "--no-overview", "--out", str(out), "--dicom"])


def test_each_dicom_case_gets_its_dicom_objects(tmp_path, threshold_model):
    _series(tmp_path / "in" / "a", "1.2.826.0.1.3680043.2.1125.9.61")
    _series(tmp_path / "in" / "b", "1.2.826.0.1.3680043.2.1125.9.62")
    assert _cohort(threshold_model, tmp_path / "out", tmp_path / "in") == 0
    cases = sorted(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert len(cases) == 2
    seen = set()
    for case in cases:
        seg = pydicom.dcmread(case / "dicom" / "segmentation.dcm")
        seen.add(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    assert seen == {"1.2.826.0.1.3680043.2.1125.9.61", "1.2.826.0.1.3680043.2.1125.9.62"}
    assert _cohort(threshold_model, tmp_path / "out", tmp_path / "in") == 0  # resumed: both cases reused
    assert (tmp_path / "out" / "worklist.csv").read_text().count(",skipped,") == 2


def test_an_image_file_case_refuses_the_cohort_before_any_case(tmp_path, threshold_model, capsys):
    _series(tmp_path / "in" / "a", "1.2.826.0.1.3680043.2.1125.9.63")
    image = tmp_path / "image.nrrd"
    sitk.WriteImage(sphere_phantom(size=(8, 8, 8)), str(image))
    assert _cohort(threshold_model, tmp_path / "out", tmp_path / "in", image) == 2
    err = capsys.readouterr().err.strip()
    assert "--dicom needs DICOM series inputs" in err and str(image) in err and "\n" not in err
    assert not (tmp_path / "out").exists()
