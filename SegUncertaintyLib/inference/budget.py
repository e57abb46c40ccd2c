"""The memory a run will need, checked against the memory available before its long part.

A huge ``--samples`` would grow until the system killed the run or an allocation failed deep inside it:
it is refused at once with one line (ResourceError, exit 6), nothing written.
"""

from __future__ import annotations

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
