"""glibc's allocator set for a process that handles a few arrays of tens of MB each.

A segmentation job allocates and frees one volume-sized array after another (the decompressed
file, the working grid, the network's activations, the probabilities, the masks). glibc serves
each one over its dynamic ``mmap`` threshold with a fresh ``mmap`` and returns it on ``free``,
so the next array page-faults its memory in again; keeping freed memory in the heap lets the
next array reuse it. Measured on the skull strip of a 256x256x192 head, whole ``pocketseg
predict`` process, 2 threads, idle: 1.24-1.33 s -> 1.19-1.21 s, minor page faults 147 k ->
124 k, peak RSS 660 -> 680 MB (docs/speed.md). Only the command line and the worker process
call it (their process is the job's own); a library caller's process is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_SETTINGS = (
    (_M_MMAP_THRESHOLD, 1 << 30),  # arrays up to 1 GiB come from the heap...
    (_M_TRIM_THRESHOLD, 1 << 30),  # ...and freed heap memory is kept for the next array
    (_M_TOP_PAD, 256 << 20),
    (_M_ARENA_MAX, 1),  # one heap for every thread: what one thread frees, the next array reuses
)


def tune_malloc_for_large_arrays() -> bool:
    """Apply the settings above to this process (Linux with glibc; elsewhere nothing). Returns
    whether they were applied; never raises."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
