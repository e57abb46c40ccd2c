"""Process memory policy of the command line and cohort workers (never changed for a library caller).

glibc serves a block from its heap unless it is at least its mmap threshold, and it raises that threshold
(up to 32 MiB) each time a larger mmapped block is freed. The slab temporaries of a large volume (1-24 MB
each) then come from the heap, and what is freed there stays in the process when the heap is fragmented:
on a 300 x 512 x 512 CT segmented with an nnU-Net model, 150 MiB more at the peak and 250 MiB kept after
the run (BENCHMARKS.md). A fixed threshold of 1 MiB makes every large block an mmap of its own, returned
to the system as soon as it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h); setting it also stops the dynamic raising
LARGE_BLOCK = 1 << 20


def return_large_blocks_to_the_system(threshold: int = LARGE_BLOCK) -> bool:
    """Serve every allocation of at least ``threshold`` bytes by its own mmap (glibc's mallopt); True when
    set, False where it does not apply (another C library, Windows, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
