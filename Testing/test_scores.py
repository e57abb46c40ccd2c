"""Subject-level scores from hand-built samples, against direct computations (numpy, scikit-learn)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from SegUncertaintyLib.inference.engine import pack_bits
from SegUncertaintyLib.inference.scores import sample_overlaps, subject_scores, volume_scores


def random_samples(t=11, shape=(6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random(shape) < 0.4
    flips = rng.random((t, *shape)) < 0.1
    return base[None] ^ flips  # (T, *S) bool


def test_pack_bits_matches_numpy_packbits():
    masks = random_samples(t=13)
    packed = pack_bits(torch.from_numpy(masks)).numpy()
    expected = np.packbits(masks, axis=0, bitorder="little")
    assert packed.shape == expected.shape == (2, 6, 7, 8)
    assert np.array_equal(packed, expected)


def test_overlaps_cv_dpw_and_diversity_match_direct_computation():
    masks = random_samples()
    t = len(masks)
    bits = np.packbits(masks, axis=0, bitorder="little")
    inter = sample_overlaps(bits, t, chunk=50)  # small chunks exercise the chunk loop
    flat = masks.reshape(t, -1)
    assert np.array_equal(inter, flat.astype(int) @ flat.T.astype(int))

    voxel_ml = 0.027
    scores = volume_scores(inter, voxel_ml)
    volumes = flat.sum(1) * voxel_ml
    assert scores["cv"] == pytest.approx(volumes.std(ddof=1) / volumes.mean())
    dice = [2 * (flat[i] & flat[j]).sum() / (flat[i].sum() + flat[j].sum())
            for i in range(t) for j in range(i + 1, t)]
    assert scores["dpw"] == pytest.approx(np.mean(dice))
    d = [1 - jaccard_score(flat[i], flat[j]) for i in range(t) for j in range(t)]
    assert scores["diversity"] == pytest.approx(np.mean(d))
    lo, hi = scores["volume_ml_interval95"]
    assert lo == pytest.approx(np.percentile(volumes, 2.5)) and hi == pytest.approx(np.percentile(volumes, 97.5))


def test_identical_samples_score_as_certain():
    masks = np.repeat(random_samples(t=1), 5, axis=0)
    scores = volume_scores(sample_overlaps(np.packbits(masks, axis=0, bitorder="little"), 5), 1.0)
    assert scores["cv"] == 0.0 and scores["dpw"] == 1.0 and scores["diversity"] == 0.0


def test_empty_samples_and_single_sample_are_documented_values():
    empty = np.zeros((4, 3, 3, 3), bool)
    scores = volume_scores(sample_overlaps(np.packbits(empty, axis=0, bitorder="little"), 4), 1.0)
    assert scores["cv"] is None  # mean volume 0: undefined
    assert scores["dpw"] == 1.0 and scores["diversity"] == 0.0  # empty pairs agree
    single = volume_scores(np.array([[5]]), 1.0)
    assert single["cv"] is None and single["dpw"] is None and single["diversity"] is None


def test_subject_scores_inside_the_predicted_segment():
    masks = random_samples(t=8)
    bits = torch.from_numpy(np.packbits(masks, axis=0, bitorder="little"))[None]
    rng = np.random.default_rng(3)
    p1 = torch.tensor(rng.random(masks.shape[1:]), dtype=torch.float32)
    mean_p = torch.stack([1 - p1, p1])
    entropy_map = torch.tensor(rng.random(masks.shape[1:]), dtype=torch.float32)
    prediction = (p1 > 0.5).to(torch.uint8)
    out = subject_scores(bits, mean_p, entropy_map, prediction, 0.5, 8, {0: "bg", 1: "fg"})["fg"]
    inside = prediction.numpy() == 1
    assert out["ulabelled"] == pytest.approx(entropy_map.numpy()[inside].mean(), rel=1e-6)
    q = p1.numpy()[inside]
    assert out["segment_entropy"] == pytest.approx(np.mean(-q * np.log2(q) - (1 - q) * np.log2(1 - q)), rel=1e-5)
    assert out["volume_ml"] == pytest.approx(inside.sum() * 0.5)


def test_readings_against_model_card_bounds():
    """Values beyond a bound on the uncertain side read "review recommended", others "within the model's
    usual range"; a missing value reads "not defined"; scores without a bound get no reading."""
    from SegUncertaintyLib.inference.scores import REVIEW, WITHIN, score_readings

    reference = {"classes": {"brain": {"cv": {"review_above": 0.016}, "dpw": {"review_below": 0.975},
                                       "diversity": {"review_above": 0.048}}}}
    per_class = {"brain": {"cv": 0.0176, "dpw": 0.9848, "diversity": None, "ulabelled": 0.9}}
    readings = score_readings(per_class, reference)["brain"]
    assert readings["cv"] == {"reading": REVIEW, "usual_range": "<= 0.016"}
    assert readings["dpw"] == {"reading": WITHIN, "usual_range": ">= 0.975"}
    assert readings["diversity"]["reading"] == "not defined"
    assert "ulabelled" not in readings
    assert score_readings({"brain": {"dpw": 0.96}}, reference)["brain"]["dpw"]["reading"] == REVIEW
    assert score_readings(per_class, None) == {"brain": {}}
