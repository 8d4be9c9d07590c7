"""The C heap during CPU renders: keep freed blocks for the next step, give them back after the render.

A CPU render allocates and frees the same large activations (tens of MiB) at every layer
of every step. glibc serves blocks above its mmap threshold (at most 32 MiB, dynamically)
with fresh ``mmap`` pages and trims the heap top above 128 KiB-64 MiB, so each step takes
its working set from the kernel again: on ``cpu-small`` that was 0.5 million page faults
and up to 2 s of kernel time per guided U-Net call, and 6-9 s of kernel time in the VAE
decode (``videodiff bench diffusers``; the docs' Benchmarks page has the numbers). With
the thresholds raised the heap keeps the freed blocks and the next step reuses them;
:func:`release` hands the free memory back to the system when the render ends.

The thresholds are process-wide and stay raised once set (glibc cannot go back to its
dynamic threshold); ``VIDEODIFF_HEAP=system`` leaves the allocator alone. Not glibc
(macOS, Windows, musl): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, so they can be reused
TRIM_THRESHOLD = 2**31 - 1  # never trim by itself: release() does, after the render


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version  # only glibc has it (and mallopt/malloc_trim with these meanings)
    except (OSError, AttributeError):
        return None
    return libc


def enabled() -> bool:
    """Whether the render heap policy applies in this process."""
    return os.environ.get("VIDEODIFF_HEAP", "").lower() != "system" and _glibc() is not None


def keep_freed() -> bool:
    """Raise glibc's mmap and trim thresholds so freed blocks stay for reuse; whether it was done."""
    libc = _glibc() if enabled() else None
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release() -> None:
    """Give the heap's free memory back to the system (``malloc_trim(0)``)."""
    libc = _glibc() if enabled() else None
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def render_heap(device) -> Iterator[None]:
    """Keep freed blocks during a render on the CPU; release the free memory when it ends."""
    if getattr(device, "type", str(device)) != "cpu" or not keep_freed():
        yield
        return
    try:
        yield
    finally:
        release()
