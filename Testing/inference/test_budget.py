"""The memory a run needs, checked before its long part: a huge --samples is refused with exit 6 at once."""

from __future__ import annotations

import math
import os
import time

import pytest

from SegUncertaintyLib.core.errors import ResourceError
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.budget import PAIR_MATRICES, run_nbytes
from SegUncertaintyLib.inference.scores import sample_overlaps
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.io.header import MEMORY_FRACTION, available_memory
from SegUncertaintyLib.models.loader import load_model
from Testing.support.phantoms import sphere_phantom


def test_the_estimate_counts_what_a_run_allocates(threshold_model):
    """Its terms are the sizes of the arrays a real run holds: the bit-packed samples of the model grid and
    the scores' (T, T) pair counts."""
    model = load_model(threshold_model)
    out = segment_image(sphere_phantom(), model, SegmentOptions(method="mc_dropout", samples=10))
    bits = out.model_grid_sample_bits
    voxels, classes, samples = math.prod(bits.shape[2:]), bits.shape[0] + 1, out.n_samples
    assert bits.size == voxels * (classes - 1) * math.ceil(samples / 8)
    assert sample_overlaps(bits[0], samples).nbytes * PAIR_MATRICES == run_nbytes(0, classes, samples, False)
    assert run_nbytes(voxels, classes, samples, False) == bits.size + PAIR_MATRICES * 8 * samples ** 2
    assert run_nbytes(voxels, classes, samples) > run_nbytes(voxels, classes, samples, False)


def test_huge_samples_are_refused_before_the_first_pass(threshold_model):
    """Enough samples that their pair matrices alone exceed the available memory: ResourceError (exit 6) in
    seconds, no forward pass run (before, the run went on allocating until it failed or was killed)."""
    available = available_memory()
    if available is None:
        pytest.skip("available memory unknown here")
    samples = math.isqrt(int(available / (PAIR_MATRICES * 8))) + 1
    stages = []
    start = time.monotonic()
    with pytest.raises(ResourceError, match=f"{samples:,} samples .* use fewer --samples") as refused:
        segment_image(sphere_phantom(), load_model(threshold_model), SegmentOptions(samples=samples),
                      lambda stage, *_: stages.append(stage))
    assert time.monotonic() - start < 30 and "inference" not in stages
    assert refused.value.exit_code == 6 and MEMORY_FRACTION < 1


def test_threads_follow_the_free_cores():
    from SegUncertaintyLib.inference.budget import free_cores, threads_for

    assert threads_for(2, 2, 0.0) == 2  # a quiet machine: every core
    assert threads_for(2, 2, 0.6) == 1  # another process busy on one core or more: one thread
    assert threads_for(2, 2, 1.0) == 1  # never fewer than one
    assert threads_for(4, 16, 0.5) == 4  # never more than this process may use
    assert 1 <= free_cores() <= os.cpu_count()


def test_free_cores_reads_the_load_average_and_the_threads_runnable_now(monkeypatch):
    from SegUncertaintyLib.inference import budget

    monkeypatch.setattr(budget.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(budget.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    # (1-minute load average, threads runnable now besides this one, threads): fewer threads only when both
    # say the machine is busy; without /proc (None) the average alone
    for load, now, threads in ((0.1, 0, 4), (1.2, 5, 3), (3.0, 3, 1), (9.0, 9, 1), (3.0, None, 1),
                               (3.0, 0, 4),  # the previous run's load still in the average, nothing running now
                               (0.1, 6, 4)):  # a moment's burst on a quiet minute
        monkeypatch.setattr(budget.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        monkeypatch.setattr(budget, "runnable_others", lambda now=now: now)
        assert budget.free_cores() == threads, (load, now)


def test_runnable_others_parses_proc_loadavg(monkeypatch):
    import io

    from SegUncertaintyLib.inference import budget

    def fake(text):
        def open_(path, *args, **kwargs):
            assert path == "/proc/loadavg"
            if text is None:
                raise FileNotFoundError(path)
            return io.StringIO(text)
        return open_

    # Linux's format: three load averages, "runnable/total" scheduling entities, the last PID
    for text, expected in (("0.50 0.40 0.30 3/132 26843\n", 2), ("1.00 0.90 0.80 1/98 7\n", 0),
                           ("0.1 0.1 0.1 12/400 99\n", 11), (None, None), ("garbage\n", None)):
        monkeypatch.setattr(budget, "open", fake(text), raising=False)
        assert budget.runnable_others() == expected, text


@pytest.mark.parametrize("threads", [1, 2])
def test_the_manifest_records_the_cpu_threads_the_run_used(threshold_model, threads):
    """The same seed reproduces a run bit for bit only on as many threads; the count is recorded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = segment_image(sphere_phantom(), load_model(threshold_model), SegmentOptions(method="ensemble"))
    finally:
        torch.set_num_threads(before)
    assert out.inference["cpu_threads"] == threads
