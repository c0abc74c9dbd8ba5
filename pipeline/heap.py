"""Give freed heap memory back to the operating system after each batch.

glibc's allocator raises its mmap threshold as large blocks are freed, so the activations of
forward passes over varying shapes (and the arrays of each batch) end up in heap arenas it
keeps: a long-lived worker's memory then grows with the number of batches it has seen (seen
here: an inference actor from 370 MB to over 1 GB in three minutes). `malloc_trim(0)` after a
batch returns those pages (about 0.2 ms) and keeps the process flat at no measurable cost in
speed, unlike a fixed low mmap threshold (2x slower forwards, measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim() -> None:
    """Release free heap pages (glibc); does nothing where there is no malloc_trim."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
