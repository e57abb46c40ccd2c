"""The streaming accumulator against the naive way: stack all samples, then compute maps and masks."""

import numpy as np
import pytest
import torch

from SegUncertaintyLib.inference.accumulator import MomentAccumulator
from SegUncertaintyLib.inference.maps import uncertainty_maps


def test_streamed_moments_equal_the_stacked_samples_maps_and_label_bits():
    gen = torch.Generator().manual_seed(0)
    t, c, shape = 10, 3, (21, 5, 4)  # 21 slices: more than one slab of 16, the last one partial
    samples = torch.softmax(3 * torch.randn((t, c, *shape), generator=gen), dim=1)
    acc = MomentAccumulator(c, shape, t)
    for p in samples:
        acc.add(p.numpy())
    mean_p, maps, bits = acc.finish()
    naive_h = (-(samples * samples.log()).sum(1) / np.log(c)).mean(0)
    expected = uncertainty_maps(samples.mean(0), (samples ** 2).mean(0), naive_h, t)
    assert torch.allclose(mean_p, samples.mean(0), atol=1e-6)
    for name in ("entropy", "mutual_information", "variance", "expected_entropy"):
        assert torch.allclose(maps[name], expected[name], atol=1e-5), name
    labels = samples.argmax(1)  # (T, *S)
    for k in (1, 2):
        for s in range(t):
            unpacked = (bits[k - 1, s // 8] >> (s % 8)) & 1
            assert torch.equal(unpacked.bool(), labels[s] == k)


def test_accumulator_refuses_wrong_shapes_and_counts():
    acc = MomentAccumulator(2, (2, 2, 2), 2)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.full((3, 2, 2, 2), 1 / 3, np.float32))
    acc.add(np.full((2, 2, 2, 2), 0.5, np.float32))
    with pytest.raises(ValueError, match="1 passes added, 2 announced"):
        acc.finish()
