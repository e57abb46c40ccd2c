"""The pure helpers of the real-data papers benchmark (Testing/benchmarks/bench_papers.py): the dataset table
marks each model's training data, roles match modalities, references and label mappings are right. No
download, no model run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_papers as bench  # noqa: E402


def test_training_data_is_marked_in_the_table_and_in_every_case_name():
    """Each bundled model's training volumes are named 'yes: <model>' in the dataset table, evaluated only as
    in-distribution ('id') for that model, and carry _TRAINING in their case names for it (never for the other
    model); every other volume says 'no'."""
    rows = {row.split(" | ")[0].lstrip("| "): row for row in bench.dataset_table()[2:]}
    assert set(rows) == {v.name for v in bench.VOLUMES}
    for volume in bench.VOLUMES:
        if volume.training_of:
            assert f"**yes: {volume.training_of}**" in rows[volume.name]
            assert volume.roles[volume.training_of] == "id"
            assert bench.case_name(volume, volume.training_of).endswith("_TRAINING")
            for other in set(volume.roles) - {volume.training_of}:
                assert bench.case_name(volume, other) == volume.name
        else:
            assert "| no |" in rows[volume.name]
            assert all(bench.case_name(volume, m) == volume.name for m in volume.roles)
    # the cards' own training-data text names the volumes the table marks
    bundled = Path(__file__).resolve().parents[2] / "SegUncertaintyLib" / "models" / "bundled"
    cards = {m: json.loads((bundled / folder / "card.json").read_text())["training_data"]
             for m, folder in ((bench.BRAIN, "brainmask_t1"), (bench.CT, "abdomen_ct_demo"))}
    assert "example_ct_sm" in cards[bench.CT] and "mni152" in cards[bench.BRAIN] and "colin27" in cards[bench.BRAIN]
    assert {v.name for v in bench.VOLUMES if v.training_of == bench.CT} == {"ts_ct_train"}
    assert {v.name for v in bench.VOLUMES if v.training_of == bench.BRAIN} == {"mni152", "colin27"}


def test_roles_follow_modality():
    """For the CT model every in-distribution or field-of-view-shifted volume is a CT and every OOD one is
    not; for the brain model every in-distribution or lesion volume is a human head MR and every OOD one is
    a CT, an abdomen or another species. Every role is one of ROLES, and OOD cases exist for both models."""
    for volume in bench.VOLUMES:
        assert set(volume.roles.values()) <= set(bench.ROLES)
    for volume in bench.cases_for(bench.CT):
        is_ct = volume.modality.startswith("CT")
        assert is_ct == (volume.roles[bench.CT] in ("id", "shift")), volume.name
    for volume in bench.cases_for(bench.BRAIN):
        head_mr = ("T1" in volume.modality or "MR head" in volume.modality) and "macaque" not in volume.modality
        assert head_mr == (volume.roles[bench.BRAIN] in ("id", "lesion")), volume.name
    assert bench.cases_for(bench.CT, "ood") and bench.cases_for(bench.BRAIN, "ood")
    assert [v.name for v in bench.cases_for(bench.BRAIN, "id")] == ["mni152", "colin27"]


def test_binary_reference_thresholds_a_mask_on_its_own_grid():
    mask = sitk.GetImageFromArray(np.array([[[0.0, 0.4, 0.5, 0.6, 1.0]]], np.float32))
    mask.SetSpacing((1.0, 2.0, 3.0))
    mask.SetOrigin((5.0, 6.0, 7.0))
    ref = bench.binary_reference(mask)
    assert ref.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayFromImage(ref).tolist() == [[[0, 0, 0, 1, 1]]]
    assert ref.GetSpacing() == (1.0, 2.0, 3.0) and ref.GetOrigin() == (5.0, 6.0, 7.0)


def test_lesion_inside_counts_lesion_voxels_under_any_foreground():
    lesion = np.zeros((2, 3, 4), np.uint8)
    lesion[0, 0, :] = 1  # 4 voxels
    seg = np.zeros_like(lesion)
    seg[0, 0, :3] = 2  # 3 of them under class 2
    seg[1] = 1  # foreground elsewhere does not count
    assert bench.lesion_inside(seg, lesion) == 0.75
    assert bench.lesion_inside(seg, np.zeros_like(lesion)) is None


def test_dice_per_class_matches_sklearn_and_skips_classes_absent_from_the_reference():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, (6, 7, 8))
    ref[ref == 3] = 0  # class 3 absent from the reference
    seg = np.where(rng.random(ref.shape) < 0.7, ref, rng.integers(0, 4, ref.shape))
    labels = {0: "background", 1: "a", 2: "b", 3: "c"}
    got = bench.dice_per_class(seg, ref, labels)
    assert set(got) == {"a", "b"}
    expected = f1_score(ref.ravel(), seg.ravel(), labels=[1, 2], average=None)
    np.testing.assert_allclose([got["a"], got["b"]], expected, rtol=1e-12)


def test_resampled_keeps_the_extent_and_label_values():
    image = sitk.GetImageFromArray(np.arange(10 * 20 * 30, dtype=np.float32).reshape(10, 20, 30))
    image.SetSpacing((0.5, 0.75, 3.0))
    out = bench.resampled(image, 3.0)
    assert out.GetSize() == (5, 5, 10) and out.GetSpacing() == (3.0, 3.0, 3.0)
    assert out.GetOrigin() == image.GetOrigin()
    labels = sitk.GetImageFromArray((np.arange(10 * 20 * 30).reshape(10, 20, 30) % 3).astype(np.uint8))
    labels.SetSpacing((0.5, 0.75, 3.0))
    assert set(np.unique(sitk.GetArrayFromImage(bench.resampled(labels, 3.0, labels=True)))) <= {0, 1, 2}
