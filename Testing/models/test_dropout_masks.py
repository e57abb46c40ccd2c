"""The counter-based elementwise dropout masks (models/dropout.SampleMasks): the kept fraction is 1 - p,
each (seed, window, sample, call) is its own stream, and the batch does not change a sample's mask."""

import numpy as np
import torch

from SegUncertaintyLib.models.dropout import DropoutCall, SampleMasks

CALL = DropoutCall(elementwise=True, p=0.3, shape=(8, 50, 50, 50))


def test_kept_fraction_is_one_minus_p_and_streams_are_independent():
    masks = SampleMasks(5, 2, [0, 1])
    first, second = masks.keep(CALL), masks.keep(CALL)  # calls 0 and 1
    n = first[0].numel()
    for keep in (*first, *second):
        assert abs(float(keep.float().mean()) - 0.7) < 5 * np.sqrt(0.21 / n)
    pairs = [(first[0], first[1]), (first[0], second[0]), (first[0], SampleMasks(5, 3, [0]).keep(CALL)[0]),
             (first[0], SampleMasks(6, 2, [0]).keep(CALL)[0])]
    for a, b in pairs:  # independent: both kept with probability 0.49
        assert abs(float((a & b).float().mean()) - 0.49) < 5 * np.sqrt(0.25 / n)


def test_a_sample_mask_does_not_depend_on_its_batch():
    alone = SampleMasks(5, 2, [4]).scaled([CALL])[0]
    batched = SampleMasks(5, 2, [1, 4]).scaled([CALL])[0]
    assert torch.equal(alone[0], batched[1])
    assert set(torch.unique(alone).tolist()) == {0.0, np.float32(1 / 0.7).item()}
