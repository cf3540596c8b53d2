"""How the worker processes' C heap treats large blocks (glibc's malloc, Linux).

By default glibc serves every block above 32 MiB with its own mmap and unmaps it on free. A training step
that allocates such blocks afresh (the item-AE's (items x users) logits and its decoder's dense gradient,
LightGCN's walk terms, a batch's gathered rows) then page-faults every one of them in again: at 300k users
the item-AE spent about as much time in the kernel as in its own arithmetic. `keep_freed_memory` turns
that off for the process (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD at its largest): blocks come from the
heap and freed ones stay mapped for the next step. The cost is memory: a process keeps its peak heap
(measured in docs/PERFORMANCE.md). Called by the processes the pipeline owns -- teacher actors and the
student's Train workers -- when `pipeline.keep_freed_memory` is on, never in the caller's own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Large blocks from the heap, freed memory kept mapped, for the rest of this process; True once
    applied (also on later calls), False where the C library is not glibc's (nothing changed)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
