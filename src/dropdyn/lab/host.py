"""The host a run shares: its cores (how many threads a run takes), its processes (which
are still alive) and glibc's allocator, set for the engine's large tensors.

The threads: :func:`default_threads` is the physical cores, or 1 when the machine is
already busy. The processes: :func:`process_alive` tells whether a pid may still run, for
the run index's claims and the store's half-written folders.

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
from pathlib import Path

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


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyperthreads counted once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        cores, cpu, phys = set(), None, None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                cpu, phys = int(value), None
            elif key == "physical id":
                phys = value
            elif key == "core id" and cpu in cpus:
                cores.add((phys, value))
        return max(1, len(cores)) if cores else max(1, len(cpus))
    except (OSError, ValueError):
        return max(1, len(cpus))


def default_threads() -> int:
    """Torch threads for a run: the physical cores, or 1 when the machine is already busy (a
    1-minute load average at or above the cores), where more threads only contend. Measured
    on a shared 2-core machine with other jobs: one thread ran experiments ~6× faster than
    the default two (teacher-student width 2000: 16 s against 90–108 s)."""
    cores = physical_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if load >= cores else cores


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still run (one we may not signal counts)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
