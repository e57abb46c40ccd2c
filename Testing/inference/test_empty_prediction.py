"""An empty prediction (a missed structure) is flagged and reads "no segmentation: review", not certain."""

import numpy as np
import torch

from SegUncertaintyLib.inference.scores import NO_SEGMENTATION, scores_document, subject_scores


def _scores(prediction: np.ndarray, t: int = 4):
    """Two classes; every sample labels exactly the voxels of ``prediction`` as class 1."""
    masks = np.repeat(prediction[None] == 1, t, axis=0)
    bits = torch.from_numpy(np.packbits(masks, axis=0, bitorder="little"))[None]
    mean_p = torch.stack([torch.from_numpy((prediction != 1).astype(np.float32)),
                          torch.from_numpy((prediction == 1).astype(np.float32))]) * 0.8 + 0.1
    entropy = torch.full(prediction.shape, 0.2)
    return subject_scores(bits, mean_p, entropy, torch.from_numpy(prediction), 1.0, t, {0: "bg", 1: "lesion"})


def test_empty_prediction_is_flagged_and_reads_review():
    empty = _scores(np.zeros((4, 5, 6), np.int64))["lesion"]
    assert empty["empty_prediction"] is True
    assert empty["dpw"] == 1.0 and empty["diversity"] == 0.0 and empty["ulabelled"] is None  # what reads certain
    document = scores_document({"lesion": empty}, "mc_dropout", 4)
    assert document["readings"]["lesion"]["empty_prediction"]["reading"] == NO_SEGMENTATION == \
        "no segmentation: review"
    assert "empty_prediction" in document["conventions"] and "empty_prediction" in document["definitions"]

    prediction = np.zeros((4, 5, 6), np.int64)
    prediction[1:3, 1:3, 1:3] = 1
    found = _scores(prediction)["lesion"]
    assert found["empty_prediction"] is False and found["segmentation_volume_ml"] == 8.0
    assert "empty_prediction" not in scores_document({"lesion": found}, "mc_dropout", 4)["readings"]["lesion"]


def test_empty_on_the_delivered_grid_counts():
    """The flag follows the delivered (input-grid) segmentation, even when the model grid holds voxels."""
    prediction = np.zeros((4, 5, 6), np.int64)
    prediction[2, 2, 2] = 1
    masks = np.repeat(prediction[None] == 1, 3, axis=0)
    bits = torch.from_numpy(np.packbits(masks, axis=0, bitorder="little"))[None]
    mean_p = torch.stack([torch.full((4, 5, 6), 0.6), torch.full((4, 5, 6), 0.4)])
    out = subject_scores(bits, mean_p, torch.zeros(4, 5, 6), torch.from_numpy(prediction), 1.0, 3,
                         {0: "bg", 1: "lesion"}, input_volumes_ml={1: 0.0})["lesion"]
    assert out["empty_prediction"] is True and out["ulabelled"] is not None
