"""Fixtures shared by the Slicer glue and module tests: a real cohort, made once per test module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cohort_template(tmp_path_factory):
    from Testing.support.cohort_cases import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort_template") / "cohort")


@pytest.fixture
def cohort(cohort_template, tmp_path):
    """A fresh copy of the cohort (tests write marks into it); returns its worklist.csv."""
    folder = shutil.copytree(cohort_template.parent, tmp_path / "cohort", symlinks=True)
    return Path(folder) / "worklist.csv"


# -- calibrated runs (issue 21 §2) and a run of a DICOM series (issue 22 §3), made once per test module --------
CALIBRATION_SIZE, CALIBRATION_SPACING = (20, 20, 20), (3.0, 3.0, 3.0)


def _labelled_phantom(images: Path, labels: Path, name: str, rng, noise_range=(0.0, 0.25), seed: int = 0,
                      radius_range=(12, 22)) -> Path:
    """A sphere phantom (varying radius, edge blur and noise) and its reference (the noiseless sphere >= 0.5)."""
    import SimpleITK as sitk

    from Testing.support.phantoms import sphere_phantom

    radius, blur, noise = rng.uniform(*radius_range), rng.uniform(1, 6), rng.uniform(*noise_range)
    kwargs = {"origin": (0.0, 0.0, 0.0)}
    clean = sphere_phantom(CALIBRATION_SIZE, CALIBRATION_SPACING, radius, blur, **kwargs)
    noisy = sphere_phantom(CALIBRATION_SIZE, CALIBRATION_SPACING, radius, blur, noise=noise, seed=seed, **kwargs)
    sitk.WriteImage(noisy, str(images / f"{name}_0000.nii.gz"))
    sitk.WriteImage(sitk.Cast(clean >= 0.5, sitk.sitkUInt8), str(labels / f"{name}.nii.gz"))
    return images / f"{name}_0000.nii.gz"


@pytest.fixture(scope="module")
def calibrated_runs(tmp_path_factory):
    """``seguncertainty calibrate`` on 10 labelled phantoms (the fewest it accepts; mc_dropout, 4 samples,
    alpha 0.2) in a SEGUNCERTAINTY_HOME of its own, then ``segment`` of a case like them ("inside") and of
    a far smaller, noisier one ("outside"); returns {"inside", "outside": run folder, "input": {name: image},
    "home": the home}."""
    import numpy as np

    from SegUncertaintyLib import cli
    from Testing.support.tiny_models import write_threshold_model

    root = tmp_path_factory.mktemp("calibrated")
    model = write_threshold_model(root / "model")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        _labelled_phantom(images, labels, f"case_{i:02d}", rng, seed=i)
    new = root / "new"
    new.mkdir()
    inputs = {"inside": _labelled_phantom(new, new, "inside", rng, seed=20),
              "outside": _labelled_phantom(new, new, "outside", rng, noise_range=(0.9, 1.0), seed=21,
                                            radius_range=(5, 6))}  # a far smaller sphere: its scores lie beyond
    method = ["--method", "mc_dropout", "--samples", "4", "--progress", "none"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGUNCERTAINTY_HOME", str(root / "home"))
        assert cli.main(["calibrate", str(model), "--images", str(images), "--labels", str(labels), *method,
                         "--alpha", "0.2", "--out", str(root / "report")]) == 0
        for name, image in inputs.items():
            assert cli.main(["segment", str(image), "--model", str(model), *method, "--no-overview",
                             "--out", str(root / name)]) == 0
    return {"inside": root / "inside", "outside": root / "outside", "input": inputs, "home": root / "home"}


DICOM_SERIES = "1.2.826.0.1.3680043.2.1125.9.21"


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """A CT series of the sphere phantom (Testing/support/dicom_series), the volume Slicer's DICOM module would
    load from it (as NRRD), and a ``segment`` run of that volume as the module runs it; returns {"series":
    folder, "uid": its series UID, "files": its files in slice order, "volume": the NRRD, "run": the run folder}."""
    import json

    import numpy as np
    import SimpleITK as sitk

    from SegUncertaintyLib import cli
    from SegUncertaintyLib.io.dicom import series_slice_files
    from Testing.support.dicom_series import write_series
    from Testing.support.phantoms import sphere_phantom
    from Testing.support.tiny_models import write_threshold_model

    root = tmp_path_factory.mktemp("dicom_run")
    model = write_threshold_model(root / "model")
    card = json.loads((model / "card.json").read_text())
    card["preprocessing"]["intensity"] = {"method": "window", "lower": 0, "upper": 1000}
    card["terminology"] = {"1": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                 "type": ["SCT", "4147007", "Mass"], "color": [0.9, 0.3, 0.2]}}
    (model / "card.json").write_text(json.dumps(card))
    phantom = sphere_phantom(size=(24, 20, 14), spacing=(2.0, 2.5, 3.0), radius_mm=16.0, blur_mm=4.0)
    array = np.round(sitk.GetArrayFromImage(phantom) * 1000).astype(np.int16)
    write_series(root / "ct", array, DICOM_SERIES, "phantom CT", spacing=(2.0, 2.5, 3.0), modality="CT")
    files = series_slice_files(root / "ct")
    sitk.WriteImage(sitk.ReadImage(files), str(root / "input.nrrd"))
    assert cli.main(["segment", str(root / "input.nrrd"), "--model", str(model), "--method", "mc_dropout",
                     "--samples", "6", "--progress", "none", "--no-overview", "--out", str(root / "run")]) == 0
    return {"series": root / "ct", "uid": DICOM_SERIES, "files": files, "volume": root / "input.nrrd",
            "run": root / "run"}
