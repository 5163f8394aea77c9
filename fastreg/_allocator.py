"""How the command-line tools set up the C allocator of their own process.

torch's CPU allocator keeps no cache: every tensor is one malloc and one free. glibc serves
a block above its mmap threshold (128 KiB at first, growing to at most 32 MiB) with fresh
pages from the kernel and gives freed memory above its trim threshold back, so a loop that
allocates the same large tensors again and again (a training step, NIO, a batch of
registrations) takes a page fault for every 4 KiB page of them, every time: 31,000-74,000
faults per UniReg, DP-VFA or cascade training step on this project's CPU machine, 4-8 % of
its CPU time at one thread (BENCHMARKS.md, "Page faults"). ``keep_freed_memory`` turns malloc's
use of mmap off (M_MMAP_MAX = 0: every block comes from the heap, whose freed blocks malloc
reuses) and raises the trim threshold to TRIM_BYTES, so from its second step on the process
reuses its own pages. Numbers are unchanged; the resident size after a peak stays up to
TRIM_BYTES higher.

Only the command-line tools call it (`fastreg train`, `register`, `apply`: they own their
process); importing fastreg changes nothing. The environment variable FASTREG_MALLOC=system
leaves the C library's defaults; FASTREG_MALLOC=keep (or unset) applies the setting. Where
the C library is not glibc the call does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_BYTES = 1 << 30
CHOICES = ("keep", "system")


def keep_freed_memory() -> bool:
    """Apply the setting above to this process; True when glibc took it."""
    choice = os.environ.get("FASTREG_MALLOC", "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise ValueError(f"FASTREG_MALLOC: expected one of {CHOICES}, got {os.environ['FASTREG_MALLOC']!r}")
    if choice == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6)
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
