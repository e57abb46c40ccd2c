"""evaluate on a cohort's folder: references named after the scans, not the hashed case ids."""

from __future__ import annotations

import SimpleITK as sitk

from SegUncertaintyLib.cohort.run import run_cohort
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.evaluation.evaluate import evaluate_folder
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model


def test_references_are_matched_by_the_inputs_file_name_when_it_is_unique(tmp_path):
    model = write_threshold_model(tmp_path / "model")
    inputs = {"x.nii.gz": 18.0, "a/t1.nii.gz": 20.0, "b/t1.nii.gz": 22.0}
    refs = tmp_path / "refs"
    refs.mkdir()
    for name, radius in inputs.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        image = sphere_phantom(size=(20, 18, 16), radius_mm=radius)
        sitk.WriteImage(image, str(tmp_path / "in" / name))
        sitk.WriteImage(sitk.Cast(image > 0.5, sitk.sitkUInt8), str(refs / name.split("/")[-1]))
    rows = run_cohort([tmp_path / "in"], tmp_path / "cohort", SegmentOptions(model=str(model), samples=2))
    ids = {row["input"].split("/in/")[-1]: row["case"] for row in rows}
    assert all(case != name.split("/")[-1] for name, case in ids.items())  # hashed ids: no reference by id

    results, _, notes = evaluate_folder(tmp_path / "cohort", refs)
    assert {r.case for r in results} == {ids["x.nii.gz"]}  # found as refs/x.nii.gz
    # two inputs are named t1.nii.gz: refs/t1.nii.gz cannot say whose it is, so neither takes it
    assert sorted(n.split(":")[0] for n in notes) == sorted(f"cohort/{ids[k]}" for k in ("a/t1.nii.gz", "b/t1.nii.gz"))
