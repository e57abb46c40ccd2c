"""Arrays kept in files (core/spill.py), and whole-volume runs whose outputs wait in a scratch folder:
the same numbers as in memory, one clear error when the files go wrong, nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegUncertaintyLib.core import spill
from SegUncertaintyLib.core.errors import ResourceError
from SegUncertaintyLib.core.spill import InMemoryArray, RawArray, SlabWriter, spill_if_large
from SegUncertaintyLib.inference.accumulator import MomentAccumulator
from SegUncertaintyLib.inference.volume_store import StoredImages, VolumeStore


def test_raw_array_round_trip_and_plane_ranges_equal_numpy_slicing(tmp_path):
    array = np.random.default_rng(0).standard_normal((3, 7, 5, 4)).astype(np.float16)
    raw = RawArray.write(tmp_path / "a.raw", array)
    assert (tmp_path / "a.raw").stat().st_size == array.nbytes
    np.testing.assert_array_equal(raw.load(), array)
    for lo, hi in [(0, 7), (2, 3), (5, 9), (6, 7)]:
        np.testing.assert_array_equal(raw.planes(lo, hi), array[:, lo:hi])
        np.testing.assert_array_equal(InMemoryArray(array).planes(lo, hi), array[:, lo:hi])
    raw.delete()
    assert not (tmp_path / "a.raw").exists()


def test_raw_array_cut_short_or_removed_is_one_clear_error(tmp_path):
    raw = RawArray.write(tmp_path / "a.raw", np.ones((2, 4, 4), np.float32))
    with open(raw.path, "r+b") as file:
        file.truncate(40)
    with pytest.raises(ResourceError, match="cut short"):
        raw.load()
    raw.delete()
    with pytest.raises(ResourceError, match="could not be read back"):
        raw.planes(0, 1)


def test_raw_array_never_overwrites_a_file(tmp_path):
    (tmp_path / "a.raw").write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        RawArray.write(tmp_path / "a.raw", np.zeros(3))
    assert (tmp_path / "a.raw").read_bytes() == b"user data"


def test_keep_spills_only_large_arrays_and_holds_them_when_the_folder_fails(tmp_path, monkeypatch):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert isinstance(spill_if_large(array, tmp_path, "x"), InMemoryArray)  # below SPILL_BYTES
    monkeypatch.setattr(spill, "SPILL_BYTES", 0)
    kept = spill_if_large(array, tmp_path, "x")
    assert isinstance(kept, RawArray) and kept.path.parent == tmp_path
    np.testing.assert_array_equal(kept.load(), array)
    assert isinstance(spill_if_large(array, None, "x"), InMemoryArray)
    held = spill_if_large(array, tmp_path / "missing", "x")  # cannot be written: kept in memory, nothing raised
    assert isinstance(held, InMemoryArray) and held.load() is array


def test_slab_writer_checks_the_slabs_continue_the_array(tmp_path):
    writer = SlabWriter(tmp_path / "v.raw", (4, 3, 2), np.float32)
    writer.append(np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="does not continue"):
        writer.append(np.zeros((2, 3, 2)))  # 5 planes of 4
    with pytest.raises(ValueError, match="does not continue"):
        writer.append(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="3 of 4 planes"):
        writer.close()
    other = SlabWriter(tmp_path / "w.raw", (4, 3, 2), np.float32)
    other.append(np.ones((1, 3, 2)))
    other.abort()
    assert not (tmp_path / "w.raw").exists()


def test_stored_images_are_read_at_each_lookup_on_the_reference_grid(tmp_path):
    reference = sitk.Image(4, 5, 6, sitk.sitkInt16)
    reference.SetSpacing((0.5, 0.7, 2.0))
    reference.SetOrigin((1.0, -2.0, 3.0))
    reference.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    store = VolumeStore(tmp_path, reference)
    volume = np.random.default_rng(1).random((6, 5, 4), dtype=np.float32)
    store.put("entropy", volume)
    images = store.images({"entropy": "entropy"})
    assert isinstance(images, StoredImages) and list(images) == ["entropy"] and len(images) == 1
    image = images["entropy"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)
    assert image.GetSpacing() == reference.GetSpacing() and image.GetDirection() == reference.GetDirection()
    assert images["entropy"] is not image  # a new image each time: nothing cached in memory
    np.testing.assert_array_equal(images.arrays["entropy"], volume)
    with pytest.raises(ValueError, match="shape"):
        store.put("bad", volume[:-1])


def test_finish_into_a_store_writes_the_same_maps_slab_by_slab(tmp_path):
    rng = np.random.default_rng(2)
    shape, passes = (9, 6, 5), 3
    plain = MomentAccumulator(3, shape, passes, slab_voxels=30)  # one plane per slab
    into_store = MomentAccumulator(3, shape, passes, slab_voxels=30)
    for _ in range(passes):
        p = torch.softmax(torch.from_numpy(rng.standard_normal((3, *shape)).astype(np.float32)) * 3, 0)
        plain.add_slabs([((), p)])
        into_store.add_slabs([((), p)])
    reference = sitk.Image(5, 6, 9, sitk.sitkFloat32)
    store = VolumeStore(tmp_path, reference)
    mean_a, labels_a, maps_a, bits_a = plain.finish()
    mean_b, labels_b, maps_b, bits_b = into_store.finish(store)
    assert sorted(maps_b) == ["expected_entropy"]  # the others went to the store, never whole in memory
    assert sorted(store.arrays) == ["entropy", "mutual_information", "variance"]
    for name in ("entropy", "mutual_information", "variance"):
        np.testing.assert_array_equal(store.arrays[name].load(), maps_a[name].numpy())
    torch.testing.assert_close(maps_b["expected_entropy"], maps_a["expected_entropy"], rtol=0, atol=0)
    assert torch.equal(labels_a, labels_b) and torch.equal(bits_a, bits_b)
    for a, b in zip(mean_a, mean_b, strict=True):
        assert torch.equal(a, b)


def test_overview_centre_from_per_axis_counts_is_the_foreground_centroid():
    """The overview's slice centre without np.argwhere (which takes 24 bytes per foreground voxel)."""
    from SegUncertaintyLib.results.overview_slices import centre_of

    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = rng.random((11, 13, 17)) < rng.uniform(0.01, 0.5)
        assert centre_of(mask) == tuple(int(v) for v in np.argwhere(mask).mean(0))
    assert centre_of(np.zeros((4, 6, 8), bool)) == (2, 3, 4)
