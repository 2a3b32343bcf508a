"""How the server process's allocator treats freed multi-MiB buffers.

Every large message the gateway forwards (and every upload chunk) passes
through a few freshly allocated buffers of its size. glibc serves blocks of
more than 128 KiB-32 MiB (its threshold moves) with mmap and gives them back
to the kernel on free, and trims the heap above 128 KiB of free space; the next
message then faults every page in again, zeroed by the kernel. On the VM
these figures come from that was half the gateway's CPU for a 4 MiB tensor
(about 5,500 page faults and 20 ms of system time per request, against about
0 and 6 ms with the settings below; bench/README.md).

Keeping up to ``TRIM_THRESHOLD`` of freed memory per arena, and taking blocks
of up to ``MMAP_THRESHOLD`` from the heap, lets the next message reuse the
pages. What a user sets in ``MALLOC_TRIM_THRESHOLD_`` or
``MALLOC_MMAP_THRESHOLD_`` wins; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

TRIM_THRESHOLD = 256 * 1024 * 1024
# glibc refuses more than half its largest arena heap (64 MiB on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_buffers() -> bool:
    """Apply the thresholds above to this process; True when glibc took them."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    libc = ctypes.CDLL(library)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:
        log.warning("the C library refused the malloc thresholds; large messages cost more")
    return applied
