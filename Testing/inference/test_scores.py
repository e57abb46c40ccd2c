"""Subject-level scores from hand-built samples, against direct computations (numpy, scikit-learn)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from SegUncertaintyLib.inference.maps import normalized_entropy
from SegUncertaintyLib.inference.scores import (
    DEFINITIONS,
    SUBJECT_SCORES,
    sample_overlaps,
    scores_document,
    subject_scores,
    volume_scores,
)


def random_samples(t=11, shape=(6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random(shape) < 0.4
    flips = rng.random((t, *shape)) < 0.1
    return base[None] ^ flips  # (T, *S) bool


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
    distinct = [1 - jaccard_score(flat[i], flat[j]) for i in range(t) for j in range(t) if i != j]
    assert scores["diversity_distinct"] == pytest.approx(np.mean(distinct))
    assert scores["diversity"] == pytest.approx((t - 1) / t * scores["diversity_distinct"])
    lo, hi = scores["volume_ml_interval95"]
    assert lo == pytest.approx(np.percentile(volumes, 2.5)) and hi == pytest.approx(np.percentile(volumes, 97.5))
    assert scores["volume_ml"] == pytest.approx(np.median(volumes))


@pytest.mark.parametrize("t", [1, 2, 3, 5, 8, 20, 30])
def test_volume_estimate_lies_inside_its_interval_in_every_random_run(t):
    """Estimate and interval come from the same sample volumes and rule (median, 2.5/97.5 percentiles):
    over many random runs, skewed ones included, the estimate never leaves its interval; with one sample
    (softmax) the interval is the estimate itself."""
    rng = np.random.default_rng(t)
    for _ in range(40):
        sizes = rng.integers(0, 5000, t) if rng.random() < 0.5 else rng.poisson(3, t) ** 3  # skewed runs too
        inter = np.diag(sizes)  # only the diagonal (volumes) matters here
        scores = volume_scores(inter, float(rng.uniform(0.001, 0.03)))
        lo, hi = scores["volume_ml_interval95"]
        assert lo <= scores["volume_ml"] <= hi
        if t == 1:
            assert lo == hi == scores["volume_ml"]


def test_diversity_distinct_does_not_grow_with_the_sample_count():
    """Independent samples, each voxel flipped with probability q from one base mask: the distinct-pair form
    averages to the same value at T = 2 and T = 16 (an unbiased estimate of E[1 - IoU] of two samples); the
    with-replacement form at T = 2 is half of that, (T - 1) / T."""
    means = {}
    for t in (2, 16):
        runs = [volume_scores(sample_overlaps(np.packbits(random_samples(t, (10, 10, 10), seed), axis=0,
                                                          bitorder="little"), t), 1.0) for seed in range(400)]
        means[t] = {k: np.mean([r[k] for r in runs]) for k in ("diversity", "diversity_distinct")}
    assert means[2]["diversity_distinct"] == pytest.approx(means[16]["diversity_distinct"], rel=0.02)
    assert means[2]["diversity"] == pytest.approx(means[16]["diversity"] * (1 / 2) / (15 / 16), rel=0.02)


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
    assert single["diversity_distinct"] is None


@pytest.mark.parametrize("n_classes", [2, 3])
def test_subject_scores_follow_the_papers_formulas(n_classes):
    """ulabelled = mean over the segment of (1/T) sum_t -sum_c p_tc ln p_tc (Hoebel et al. 2019), computed
    here with scipy from the per-sample softmaxes; segment_entropy = eq. 7 of Mehrtash et al. 2020 in nats
    by hand. The scores get the engine's normalized expected-entropy map, as the pipeline passes it."""
    from scipy.stats import entropy as scipy_entropy

    t, shape = 8, (6, 7, 8)
    masks = random_samples(t=t)
    bits = torch.from_numpy(np.packbits(masks, axis=0, bitorder="little"))[None].repeat(n_classes - 1, 1, 1, 1, 1)
    rng = np.random.default_rng(3)
    samples = rng.dirichlet(np.ones(n_classes) * 0.7, size=(t, *shape))  # (T, *S, C)
    samples_t = torch.tensor(np.moveaxis(samples, -1, 1), dtype=torch.float64)  # (T, C, *S)
    mean_p = samples_t.mean(0)
    expected_entropy = normalized_entropy(samples_t, 1).mean(0)  # the engine's map: E_t[H(p_t)] / ln C
    prediction = mean_p.argmax(0)
    labels = {k: f"c{k}" for k in range(n_classes)}
    result = subject_scores(bits, mean_p, expected_entropy, prediction, 0.5, t, labels)
    per_voxel = scipy_entropy(samples, axis=-1).mean(0)  # nats, mean over samples of each sample's entropy
    for k in range(1, n_classes):
        out = result[f"c{k}"]
        inside = prediction.numpy() == k
        assert out["ulabelled"] == pytest.approx(per_voxel[inside].mean(), rel=1e-9)
        predictive = scipy_entropy(mean_p.numpy(), axis=0)[inside].mean()  # H(E_t p): not the paper's measure
        assert out["ulabelled"] < predictive  # Jensen: expected entropy <= entropy of the mean
        q = mean_p.numpy()[k][inside]
        assert out["segment_entropy"] == pytest.approx(np.mean(-q * np.log(q) - (1 - q) * np.log(1 - q)), rel=1e-9)
        assert out["segmentation_volume_ml"] == pytest.approx(inside.sum() * 0.5)
        assert list(out) == list(DEFINITIONS)


def test_one_list_of_score_names_and_every_convention_named():
    """The scalar scores are a subset of the defined keys, and scores.json names its conventions and cites
    the papers by title and year (never by a file name)."""
    import json

    assert set(SUBJECT_SCORES) <= set(DEFINITIONS)
    document = scores_document({"fg": {}}, "mc_dropout", 8)
    assert {"entropy_unit", "ulabelled", "volume", "grid"} <= set(document["conventions"])
    text = json.dumps(document)
    assert "2019" in text and "2020" in text and "2021" in text and "seeds" not in text and ".txt" not in text


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


def test_usual_ranges_apply_only_to_the_method_and_sample_count_they_were_measured_with():
    """A card's ranges measured with ensemble+mc_dropout (15 samples) read nothing for mc_dropout or for
    another sample count: each bounded score reads "no usual range for this method", never "within"; a
    reference that does not record its method applies to no run."""
    from SegUncertaintyLib.inference.scores import NO_RANGE, REVIEW, WITHIN

    reference = {"source": "card", "method": "ensemble+mc_dropout", "n_samples": 15,
                 "classes": {"liver": {"cv": {"review_above": 0.144}, "dpw": {"review_below": 0.662}}}}
    per_class = {"liver": {"cv": 0.01, "dpw": 0.5}}
    same = scores_document(per_class, "ensemble+mc_dropout", 15, reference)
    assert {k: v["reading"] for k, v in same["readings"]["liver"].items()} == {"cv": WITHIN, "dpw": REVIEW}
    for method, n in (("mc_dropout", 20), ("ensemble+mc_dropout", 30), ("mc_dropout", 15)):
        other = scores_document(per_class, method, n, reference)
        assert {v["reading"] for v in other["readings"]["liver"].values()} == {NO_RANGE}
        assert other["readings"]["liver"]["cv"]["usual_range"] == "<= 0.144 with ensemble+mc_dropout, 15 samples"
        assert other["reference_source"].startswith("not applied") and f"{method}, {n} samples" in \
            other["reference_source"]
    unrecorded = scores_document(per_class, "mc_dropout", 20, {"classes": reference["classes"]})
    assert {v["reading"] for v in unrecorded["readings"]["liver"].values()} == {NO_RANGE}
    assert unrecorded["reference_measured_with"] == "an unrecorded method"
