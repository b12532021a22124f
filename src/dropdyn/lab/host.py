"""The host a run shares: its processes (:func:`process_alive`: whether a pid may still
run, for the run index's claims and the store's half-written folders) and glibc's
allocator, set for the engine's large tensors. (How many threads a call takes:
:mod:`dropdyn.threads`.)

The allocator:

glibc serves an allocation above its mmap threshold (adaptive, but never above 32 MiB)
with a fresh mapping, and returns it to the system when it is freed; it also gives back
the top of its heap once more than its trim threshold is free there. A step at a large
width allocates and frees (width × m) matrices of hundreds of MiB each time, so each step
page-faults them in afresh: at width 10⁶, m = 100 (float32, 2-core CPU) the faults were a
third of a GD step's time (2.3 million minor faults in 10 steps; docs/engine.md).

:func:`reuse_freed_memory` raises both thresholds to 2 GiB (the most ``mallopt`` takes):
freed blocks then stay in the heap and the next step reuses them. The price is memory: the
process keeps its peak resident size until it ends, and the heap holds the freed blocks
fragmented (GD at width 10⁵, m = 1000: 1.22 GiB resident against 0.67 GiB, flat from step
20 to 40). The ``dropdyn`` command and the workers of a sweep set it (:func:`configure`)
unless ``DROPDYN_GLIBC_MALLOC=1``; from Python, call it once at the start of a session.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's <malloc.h>
LIMIT = 2**31 - 1  # mallopt takes an int
OPT_OUT = "DROPDYN_GLIBC_MALLOC"


def configure() -> bool:
    """The command's setting: :func:`reuse_freed_memory`, unless the environment variable
    ``DROPDYN_GLIBC_MALLOC`` is set (to anything but ``""`` or ``"0"``), which keeps glibc's
    defaults (for a run that needs the memory more than the speed)."""
    return False if os.environ.get(OPT_OUT, "") not in ("", "0") else reuse_freed_memory()


def reuse_freed_memory() -> bool:
    """Keep freed memory of up to 2 GiB a block in this process for reuse (glibc only).
    Returns whether the allocator took the setting (False off Linux, or with a C library
    without ``mallopt``, where nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, LIMIT) == 1 and mallopt(M_TRIM_THRESHOLD, LIMIT) == 1


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still run (one we may not signal counts)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
