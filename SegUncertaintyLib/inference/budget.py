"""The memory a run will need, checked against the memory available before its long part.

A huge ``--samples`` would grow until the system killed the run or an allocation failed deep inside it:
it is refused at once with one line (ResourceError, exit 6), nothing written.
"""

from __future__ import annotations

import os

from ..core.errors import ResourceError
from ..io.header import MEMORY_FRACTION, available_memory

# (T, T) float64 or int64 matrices the scores hold at once per class (scores.sample_overlaps' sums and
# counts, then pairwise Dice or IoU and 1 - IoU)
PAIR_MATRICES = 4
# float32 values a voxel of the model grid holds while windows are stitched: the sums of the probabilities
# (C), the blended maps (4), the weights (2), and the mean probability and labels after stitching (C + 1)
STITCH_FLOATS = 7


def run_nbytes(voxels: int, n_classes: int, n_samples: int, sums_in_memory: bool = True) -> int:
    """Bytes a run of ``n_samples`` samples over ``voxels`` voxels with ``n_classes`` classes (background
    included) holds at its peak, beyond the model and the image: the per-sample labels, bit-packed
    ((C-1)·ceil(T/8) bytes a voxel), the float32 running sums and maps (2C + STITCH_FLOATS a voxel, left out
    when ``sums_in_memory`` is False: kept in files) and the scores' pair matrices (PAIR_MATRICES·8·T² bytes).
    """
    bits = (n_classes - 1) * ((n_samples + 7) // 8)
    sums = 4 * (2 * n_classes + STITCH_FLOATS) if sums_in_memory else 0
    return voxels * (bits + sums) + PAIR_MATRICES * 8 * n_samples * n_samples


def check_run_memory(voxels: int, n_classes: int, n_samples: int, sums_in_memory: bool = True) -> None:
    """ResourceError (exit 6) when :func:`run_nbytes` exceeds MEMORY_FRACTION of the available memory."""
    needed = run_nbytes(voxels, n_classes, n_samples, sums_in_memory)
    available = available_memory()
    if available is not None and needed > MEMORY_FRACTION * available:
        raise ResourceError(f"{n_samples:,} samples over {voxels:,} voxels need about {needed / 1e9:.1f} GB, "
                            f"more than {MEMORY_FRACTION:.0%} of the available memory ({available / 1e9:.1f} GB); "
                            "use fewer --samples; nothing was written")


def threads_for(usable: int, total: int, busy_fraction: float) -> int:
    """Threads for the forward passes: the ``usable`` cores (this process's affinity) less the cores busy with
    other work (``busy_fraction`` 0-1 of all ``total`` cores), rounded, between 1 and ``usable``."""
    return max(1, min(usable, round(total * (1.0 - busy_fraction))))


def runnable_others() -> int | None:
    """Threads runnable on the machine at this moment besides the caller's (the fourth field of Linux's
    /proc/loadavg, "runnable/total", less one); None where there is no /proc/loadavg."""
    try:
        with open("/proc/loadavg", encoding="ascii") as stream:
            return max(0, int(stream.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None


def free_cores() -> int:
    """:func:`threads_for` with the system's load, read at no cost (sampling CPU use instead held every run up
    by 0.2 s): the busy share of the cores is the smaller of the 1-minute load average and the threads
    runnable now (:func:`runnable_others`), so threads are given up only when the last minute and this moment
    agree. The average alone lags by a minute: a run right after another (a cohort's next case, a
    benchmark's next round) would see the previous run's load and take one thread on an idle machine.

    torch's threads meet at a barrier after every layer: one that shares its core with another busy process
    stalls them all, so on a shared machine fewer threads are faster (2 cores, 4 other busy processes: one 64^3
    UNet window 0.42 s with 1 thread, 0.99 s with 2). It is read once: later changes are not followed.
    """
    total = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average: assume a quiet machine
        load = 0.0
    now = runnable_others()
    busy = load if now is None else min(load, now)
    return threads_for(usable, total, min(1.0, busy / total))
