"""Hand freed heap memory back to the operating system after large transient work.

Why: glibc serves numpy buffers of up to 32 MB from its heap once its dynamic mmap threshold has
risen, and a heap fragmented by such buffers keeps their pages after they are freed. The matcher's
per-region n-gram hashing freed one region's worth of chunk buffers while filling the region's
final arrays, and RSS held both (~2.5x the result at 100k long descriptions per region).
``malloc_trim(0)`` releases every free page of the heap; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Return free heap pages to the OS (glibc); True when glibc released any."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
