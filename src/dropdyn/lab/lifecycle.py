"""One run's life, the same for a run of the CLI or a notebook (:meth:`Experiment.run`) and
for a point of a sweep (:func:`dropdyn.lab.sweep.run_point`):

    started (or claimed) in the index: ``running``, with this process's pid and host
    → computed into its folder (:meth:`Experiment.execute`: the folder appears whole, or not),
      the row's heartbeat renewed meanwhile (a claim without one for a while has expired:
      the index's ``CLAIM_TTL``)
    → ``complete`` with its summary and wall time, or ``failed`` with the error — on Ctrl-C
      too, so that no ``running`` row outlives the run in a process that goes on (a notebook).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import index as _index
from .index import RunIndex
from .store import read_json


@dataclass(frozen=True)
class Entry:
    """A run's row in a store's index: the index, the run's id there (its folder relative to
    the store), its key (:func:`dropdyn.lab.store.run_key`) and its sweep (None: none)."""

    index: RunIndex
    run_id: str
    key: str
    sweep: str | None = None


def conduct(experiment, cfg, folder: Path, entry: Entry | None, *, params: dict | None = None,
            claimed: bool = False, force: bool = False, ctx=None) -> tuple[Path, float]:
    """Compute the resolved ``cfg`` of ``experiment`` into ``folder`` and keep its index row
    (``entry``; None: not indexed) up to date; returns the folder and the wall time in
    seconds. ``params``: the settings the row records (default: ``cfg``'s fields);
    ``claimed``: the row is already this process's (:meth:`RunIndex.claim`), else it is
    started here; ``force`` and ``ctx`` go to :meth:`Experiment.execute`."""
    params = dataclasses.asdict(cfg) if params is None else params
    if entry is not None and not claimed:
        entry.index.start(entry.run_id, entry.key, experiment.name, params, entry.sweep)
    t0 = time.perf_counter()
    try:
        with heartbeat(entry):
            path = experiment.execute(cfg, folder, force=force, ctx=ctx)
    except BaseException as e:
        if entry is not None:
            entry.index.fail(entry.run_id, entry.key, experiment.name, params, describe(e), sweep=entry.sweep)
        raise
    seconds = time.perf_counter() - t0
    if entry is not None:
        entry.index.finish(entry.run_id, entry.key, experiment.name, params, read_json(path / "summary.json"),
                           sweep=entry.sweep, seconds=seconds)
    return path, seconds


def describe(e: BaseException) -> str:
    """An exception as an index row's error: ``"RuntimeError: message"``, or its name alone."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


@contextlib.contextmanager
def heartbeat(entry: Entry | None):
    """Renew ``entry``'s claim every ``HEARTBEAT`` seconds while the block runs (a daemon
    thread; nothing without an entry)."""
    if entry is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.wait(_index.HEARTBEAT):
            with contextlib.suppress(sqlite3.Error, OSError):  # a missed beat: the next may land
                entry.index.beat(entry.run_id)

    thread = threading.Thread(target=beat, daemon=True, name="dropdyn-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
