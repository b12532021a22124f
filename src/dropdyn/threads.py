"""How many intra-op threads a call of dropdyn takes, on a machine it may share.

A step of the engine is many small parallel operations, each ending in a barrier that waits
for its slowest thread: when another process holds a core, the thread on that core stalls
every barrier (a dropout step at width 5000 took 26× longer on two threads than alone on
one, with one core of two taken; docs/engine.md). So a call takes the physical cores that
other processes leave free:

    threads = physical cores − round(CPUs the other processes use), at least 1

The other processes' use is measured, not guessed: the busy time of this process's CPUs
(/proc/stat) less this process's own CPU time (``os.times``), over :data:`SAMPLE` seconds,
remembered for :data:`KEEP` seconds. Where /proc/stat cannot be read it is the 1-minute
load average less this process's own CPU use over the last minute (a notebook's earlier
runs are not "another process").

Every entry point that runs work — :func:`dropdyn.simulate`, :func:`dropdyn.simulate_sme`,
:func:`dropdyn.run`, :func:`dropdyn.alignment` — runs under :func:`using`: an explicit
``threads=`` wins; a count you set yourself (``torch.set_num_threads`` to other than torch's
default, or ``OMP_NUM_THREADS``) is kept; otherwise :func:`default_threads` decides; and
the caller's count is given back afterwards. Calls nested in one (an experiment's
simulations) keep the outer choice.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections import deque
from pathlib import Path

import torch

from ._checks import InputError, check_int

_TORCH_DEFAULT = torch.get_num_threads()  # torch's own choice, before anyone changed it
_INSIDE = contextvars.ContextVar("dropdyn_threads", default=None)  # the count of the dropdyn call we are in
_FIXED: list[int | None] = [None]  # set_threads's count
_OWN: deque = deque(maxlen=64)  # (wall, CPU seconds of this process) samples, for its own share of the load
WINDOW = 60.0  # seconds: the load average's horizon
SAMPLE = 0.05  # seconds over which the other processes' CPU use is measured
KEEP = 5.0  # seconds a measurement is reused (a loop of short calls measures once in a while)
_LAST: list = [None]  # (monotonic time, others' load) of the last measurement


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyperthreads counted once).
    Read from /proc/cpuinfo: psutil counts the machine's cores, not those of this process's
    CPU affinity."""
    cpus = available_cpus()
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


def available_cpus() -> set[int]:
    """The logical CPUs this process may run on."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def own_load() -> float:
    """This process's CPU use (all its threads, in cores) over the last :data:`WINDOW`
    seconds, or since the first call if that is more recent."""
    t = os.times()
    now = (time.monotonic(), t.user + t.system)
    _OWN.append(now)
    while len(_OWN) > 2 and now[0] - _OWN[1][0] >= WINDOW:  # keep one sample at least WINDOW old
        _OWN.popleft()
    wall, cpu = now[0] - _OWN[0][0], now[1] - _OWN[0][1]
    return cpu / wall if wall > 1.0 else 0.0


def busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds the logical CPUs ``cpus`` have spent busy since boot (all but idle and
    I/O wait; /proc/stat), or None where that cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields]
            busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # user … steal, less idle and iowait
    return busy / tick


def others_load() -> float:
    """How many of this process's CPUs other processes keep busy (≥ 0), measured over
    :data:`SAMPLE` seconds and reused for :data:`KEEP` seconds; or, where /proc/stat cannot be
    read, the 1-minute load average less this process's own share (:func:`own_load`)."""
    now = time.monotonic()
    if _LAST[0] is not None and now - _LAST[0][0] < KEEP:
        return _LAST[0][1]
    cpus = available_cpus()
    busy0, own0, t0 = busy_seconds(cpus), sum(os.times()[:2]), time.monotonic()
    if busy0 is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0.0, load - own_load())
    time.sleep(SAMPLE)
    busy1, own1, t1 = busy_seconds(cpus), sum(os.times()[:2]), time.monotonic()
    others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))
    _LAST[0] = (t1, others)
    return others


def default_threads() -> int:
    """Threads for a call: the physical cores not taken by other processes, at least 1."""
    return max(1, physical_cores() - round(others_load()))


def check_threads(threads) -> int:
    """``threads`` as an int, refused (one line) when below 1 or above the CPUs this process may use."""
    n = check_int("threads", threads, 1)
    cpus = len(available_cpus())
    if n > cpus:
        raise InputError(f"threads must be at most the {cpus} CPU(s) this process may use, got {n}")
    return n


def chosen(threads=None) -> int:
    """The count a call takes: ``threads`` if given; inside another dropdyn call, its count;
    :func:`set_threads`'s; a count the user set with torch (other than torch's default, or
    ``OMP_NUM_THREADS``); else :func:`default_threads`."""
    if threads is not None:
        return check_threads(threads)
    if _INSIDE.get() is not None:
        return torch.get_num_threads()
    if _FIXED[0] is not None:
        return _FIXED[0]
    if torch.get_num_threads() != _TORCH_DEFAULT or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return default_threads()


@contextlib.contextmanager
def using(threads=None):
    """Run the block with :func:`chosen` threads and give the caller's count back after;
    yields the count."""
    before = torch.get_num_threads()
    n = chosen(threads)
    token = _INSIDE.set(n)
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        _INSIDE.reset(token)
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def set_threads(threads: int | None) -> None:
    """Fix the count of every later call in this process, and torch's (None: dropdyn chooses
    again at each call). The count can change the last bits of a result (a reduction split
    over more threads rounds differently): fix it to replay a run bit for bit."""
    _FIXED[0] = None if threads is None else check_threads(threads)
    torch.set_num_threads(_FIXED[0] if _FIXED[0] is not None else _TORCH_DEFAULT)
