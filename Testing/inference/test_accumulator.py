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
    acc = MomentAccumulator(c, shape, t, slab_voxels=16 * 5 * 4)
    for p in samples:
        acc.add_slabs([((), p.numpy())])
    mean_p, labels, maps, bits = acc.finish()
    naive_h = (-(samples * samples.log()).sum(1) / np.log(c)).mean(0)
    expected = uncertainty_maps(samples.mean(0), (samples ** 2).mean(0), naive_h, t)
    assert torch.allclose(torch.stack(mean_p), samples.mean(0)[1:], atol=1e-6)  # foreground classes
    assert torch.equal(labels.long(), samples.mean(0).argmax(0))
    for name in ("entropy", "mutual_information", "expected_entropy"):
        assert torch.allclose(maps[name], expected[name], atol=1e-5), name
    # M2 is kept in float16: the documented bound, (T - 1) * 2^-11 of the value (+ 2^-24 per update)
    reference = samples.double().var(0, unbiased=True).amax(0)
    error = (maps["variance"].double() - reference).abs()
    assert torch.all(error <= (t - 1) * (2 ** -11 * reference + 2 ** -24) + 1e-6)
    assert float(error.max()) > 1e-7  # float16 is really in use (a float32 M2 would be exact to 1e-7)
    sample_labels = samples.argmax(1)  # (T, *S)
    for k in (1, 2):
        for s in range(t):
            unpacked = (bits[k - 1, s // 8] >> (s % 8)) & 1
            assert torch.equal(unpacked.bool(), sample_labels[s] == k)


def test_accumulator_refuses_wrong_shapes_and_counts():
    acc = MomentAccumulator(2, (2, 2, 2), 2)
    with pytest.raises(ValueError, match="shape"):
        acc.add_slabs([((), np.full((3, 2, 2, 2), 1 / 3, np.float32))])
    acc.add_slabs([((), np.full((2, 2, 2, 2), 0.5, np.float32))])
    with pytest.raises(ValueError, match="1 passes added, 2 announced"):
        acc.finish()


def test_a_pass_in_slabs_along_any_axis_equals_the_whole_pass():
    gen = torch.Generator().manual_seed(1)
    t, c, shape = 3, 3, (6, 7, 5)
    samples = torch.softmax(2 * torch.randn((t, c, *shape), generator=gen), dim=1)
    whole, slabbed = MomentAccumulator(c, shape, t), MomentAccumulator(c, shape, t)
    for p in samples:
        whole.add_slabs([((), p)])
        slabbed.add_slabs(((slice(None), slice(y, y + 2)), p[:, :, y:y + 2]) for y in range(0, shape[1], 2))
    (mean_a, labels_a, maps_a, bits_a), (mean_b, labels_b, maps_b, bits_b) = whole.finish(), slabbed.finish()
    assert all(torch.equal(a, b) for a, b in zip(mean_a, mean_b, strict=True)) and torch.equal(labels_a, labels_b)
    assert all(torch.equal(maps_a[name], maps_b[name]) for name in maps_a) and torch.equal(bits_a, bits_b)


def test_a_pass_that_does_not_cover_the_volume_is_refused():
    acc = MomentAccumulator(2, (4, 2, 2), 1)
    with pytest.raises(ValueError, match="covered 8 voxels, the volume has 16"):
        acc.add_slabs([((slice(0, 2),), np.full((2, 2, 2, 2), 0.5, np.float32))])


@pytest.mark.parametrize("pieces", [
    lambda p: [((slice(0, 2),), p[:, :2]), ((slice(2, 5),), p[:, 2:])],  # leading slabs: one read per sum part
    lambda p: [((slice(None), slice(y, y + 3)), p[:, :, y:y + 3]) for y in (0, 3)],  # along y, like
    lambda p: [((), p)],                                                          # a transposed nnU-Net pass
])
def test_sums_in_files_are_never_in_memory_and_give_the_same_bytes(tmp_path, pieces):
    gen = torch.Generator().manual_seed(2)
    t, c, shape = 3, 3, (5, 6, 4)
    samples = torch.softmax(2 * torch.randn((t, c, *shape), generator=gen), dim=1)
    plain, in_files = MomentAccumulator(c, shape, t), MomentAccumulator(c, shape, t, slab_voxels=24, folder=tmp_path)
    seen = []

    def pass_pieces(p):  # like a model's pass_slabs: the forward pass runs before the first piece
        seen.append(sorted(f.name for f in tmp_path.iterdir()))
        yield from pieces(p)

    for p in samples:
        plain.add_slabs([((), p)])
        in_files.add_slabs(pass_pieces(p))
        assert in_files.in_files and all(not isinstance(v, torch.Tensor) for v in in_files.state.values())
    assert seen[0] == [] and seen[1] == ["bits.raw", "m2.raw", "sum_h.raw", "sum_p1.raw", "sum_p2.raw"]
    (mean_a, labels_a, maps_a, bits_a), (mean_b, labels_b, maps_b, bits_b) = plain.finish(), in_files.finish()
    assert list(tmp_path.iterdir()) == []  # deleted once read
    assert all(torch.equal(a, b) for a, b in zip(mean_a, mean_b, strict=True)) and torch.equal(labels_a, labels_b)
    assert all(torch.equal(maps_a[name], maps_b[name]) for name in maps_a) and torch.equal(bits_a, bits_b)


def test_a_folder_where_the_sums_cannot_be_written_keeps_them_in_memory(tmp_path):
    """A full disk (here: a folder that does not exist): nothing left behind, the sums stay in memory and
    the result equals the in-memory one."""
    gen = torch.Generator().manual_seed(3)
    t, c, shape = 3, 2, (4, 3, 5)
    samples = torch.softmax(torch.randn((t, c, *shape), generator=gen), dim=1)
    plain, fallback = MomentAccumulator(c, shape, t), MomentAccumulator(c, shape, t, folder=tmp_path / "missing")
    for p in samples:
        plain.add_slabs([((), p)])
        fallback.add_slabs([((), p)])
    assert not fallback.in_files and not (tmp_path / "missing").exists()
    (mean_a, labels_a, maps_a, _), (mean_b, labels_b, maps_b, _) = plain.finish(), fallback.finish()
    assert all(torch.equal(a, b) for a, b in zip(mean_a, mean_b, strict=True)) and torch.equal(labels_a, labels_b)
    assert all(torch.equal(maps_a[name], maps_b[name]) for name in maps_a)


def test_sums_in_files_removed_meanwhile_are_one_clear_error(tmp_path):
    from SegUncertaintyLib.core.errors import ResourceError

    t, c, shape = 2, 2, (3, 3, 3)
    samples = torch.softmax(torch.randn((t, c, *shape), generator=torch.Generator().manual_seed(4)), dim=1)
    accumulator = MomentAccumulator(c, shape, t, folder=tmp_path)
    accumulator.add_slabs([((), samples[0])])

    def pieces_after_a_cleanup():  # something empties the temporary folder while the pass runs
        for f in tmp_path.iterdir():
            f.unlink()
        yield (), samples[1]

    with pytest.raises(ResourceError, match="could not be read back"):
        accumulator.add_slabs(pieces_after_a_cleanup())
    (tmp_path / "sum_h.raw").write_bytes(b"\0" * 10)  # or cut short
    with pytest.raises(ResourceError, match="cut short"):
        accumulator.state["sum_h"].read_box((slice(0, 3),))
