"""Parameter sweeps: many runs of one experiment, resumable, on one of three executors.

A sweep file (YAML or TOML) names an experiment, fixed settings and the points:

    experiment: teacher-student
    name: widths            # optional (default: the file's stem)
    base: {steps: 200}      # settings shared by every point
    grid: {width: [500, 1000, 2000], keep: [0.5, 1.0]}   # Cartesian product, or
    # zip: {width: [500, 1000], lr: [1.0, 0.5]}          # element-wise, or
    # list: [{width: 500}, {width: 1000, keep: 0.2}]     # explicit points

Each point is an experiment run keyed by the hash of (experiment, resolved config,
dropdyn version) with its folder at ``STORE/<experiment>/<key>``. A point whose folder
exists is complete (folders appear atomically) and is never recomputed, so re-running
a sweep resumes it, whatever killed the last attempt. A point that raises is recorded
as failed with its error and the others go on.

Executors: ``serial``; ``processes`` (a local pool of ``workers`` spawned processes);
``dask`` (a ``dask.distributed`` ``LocalCluster`` of ``workers`` one-thread workers, or
the scheduler at ``scheduler=tcp://host:port`` — any cluster, e.g. dask-jobqueue on
SLURM, whose workers see the store's file system). Every point runs with
``threads`` intra-op threads whatever the executor, so results are bit-identical
across executors on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import InputError, shown
from ..threads import available_cpus, using
from . import host
from .experiment import Context, get, registry
from .index import CLAIM_TTL, RunIndex, scalar_summary
from .lifecycle import Entry, conduct, describe
from .settings import as_text, read_config_file
from .store import RunFolder, atomic_write_bytes, read_json, run_key

EXECUTORS = ("serial", "processes", "dask")
WORKER_ENV = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}  # LocalCluster workers
SWEEP_KEYS = {"experiment", "name", "base", "grid", "zip", "list"}
MAX_POINTS = 1_000_000  # per sweep file


@dataclass
class Sweep:
    """A validated sweep: ``points[i]`` are the swept settings of point i, ``configs[i]``
    its resolved config (a dict), ``keys[i]`` its store key."""

    experiment: str
    name: str
    base: dict
    points: list[dict]
    configs: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    @property
    def swept(self) -> list[str]:
        """Names of the settings that the points set, in first-seen order."""
        return list(dict.fromkeys(k for p in self.points for k in p))

    def run_id(self, i: int) -> str:
        return f"{self.experiment}/{self.keys[i]}"


def resolve(experiment: str, settings: dict) -> dict:
    """The resolved config of ``experiment`` with ``settings`` (validated) as a dict."""
    return dataclasses.asdict(get(experiment).resolve(settings))


def _points(spec: dict, where: str) -> list[dict]:
    given = [k for k in ("grid", "zip", "list") if k in spec]
    if len(given) != 1:
        raise InputError(f"{where}: give exactly one of grid, zip or list, got "
                         f"{', '.join(given) if given else 'none'}")
    kind, body = given[0], spec[given[0]]
    if kind == "list":
        if not isinstance(body, list) or not body:
            raise InputError(f"{where}: list must be a non-empty list of mappings")
        for i, p in enumerate(body):
            if not isinstance(p, dict):
                raise InputError(f"{where}: list entry {i} must be a mapping of settings, got {shown(p)}")
        return [dict(p) for p in body]
    if not isinstance(body, dict) or not body:
        raise InputError(f"{where}: {kind} must be a non-empty mapping of setting: [values]")
    for k, v in body.items():
        if not isinstance(v, list) or not v:
            raise InputError(f"{where}: {kind}.{k} must be a non-empty list of values, got {shown(v)}")
    names = list(body)
    if kind == "grid":
        count = math.prod(len(v) for v in body.values())
        if count > MAX_POINTS:  # a few lines of grid can ask for more points than a store can hold
            raise InputError(f"{where}: the grid makes {count:,} points, more than {MAX_POINTS:,}: split it into "
                             "several sweeps")
        return [dict(zip(names, vals, strict=True)) for vals in itertools.product(*body.values())]
    lengths = {k: len(v) for k, v in body.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"{where}: zip lists must have one length, got {lengths}")
    return [dict(zip(names, vals, strict=True)) for vals in zip(*body.values(), strict=True)]


def make_sweep(spec: dict, *, name: str = "sweep", where: str = "sweep") -> Sweep:
    """Validate a sweep mapping (see the module doc) and resolve every point's config.
    Duplicate points (same key) are kept once."""
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(SWEEP_KEYS))}")
    if "experiment" not in spec:
        raise InputError(f"{where}: missing 'experiment' (one of {', '.join(registry())})")
    experiment = spec["experiment"]
    get(str(experiment))
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise InputError(f"{where}: base must be a mapping of settings, got {shown(base)}")
    sweep_name = str(spec.get("name") or name)
    if not sweep_name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InputError(f"{where}: name must be letters, digits, '-', '_' or '.', got {shown(sweep_name)}")
    sweep = Sweep(experiment, sweep_name, base, [])
    seen = set()
    for i, point in enumerate(_points(spec, where)):
        try:
            cfg = resolve(experiment, {**base, **point})
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: point {i} {shown(point)}: {e}") from None
        key = run_key(experiment, cfg)
        if key not in seen:
            seen.add(key)
            sweep.points.append(point)
            sweep.configs.append(cfg)
            sweep.keys.append(key)
    return sweep


def load_sweep(path) -> Sweep:
    """A sweep from a YAML or TOML file."""
    path = Path(path)
    return make_sweep(read_config_file(path), name=path.stem, where=f"sweep file {path}")


def _summary_of(folder: Path) -> dict | None:
    """A point's summary; None if it has none, or none that reads as a JSON object."""
    summary = read_json(folder / "summary.json")
    return summary if isinstance(summary, dict) else None


def run_point(task: dict) -> dict:
    """Run one point (in any process): skip it if complete, else run the experiment into its
    folder and record it in the index. Never raises for a failing experiment: the failure
    is recorded and returned (``refused``: its settings were refused, an InputError).
    ``task``: experiment, config, key, root, sweep, threads."""

    host.configure()  # in a spawned worker too

    root, exp, cfg, key = Path(task["root"]), task["experiment"], task["config"], task["key"]
    folder = root / exp / key
    index = RunIndex(root)
    run_id = f"{exp}/{key}"
    told = False
    while True:
        summary = _summary_of(folder)
        if summary is not None:  # complete: make sure the index knows (a killed driver may not have told it)
            if index.status(run_id) != "complete":
                index.finish(run_id, key, exp, cfg, summary, sweep=task.get("sweep"))
            return {"key": key, "status": "complete", "skipped": True}
        if folder.is_dir() and any(folder.iterdir()):  # folders appear whole: this one was damaged or edited since
            error = (f"{str(folder)!r} has no readable summary.json; remove it (dropdyn runs rm {run_id} --store "
                     f"{shlex.quote(str(root))}) to compute the point again")
            index.fail(run_id, key, exp, cfg, error, sweep=task.get("sweep"))
            return {"key": key, "status": "failed", "error": error, "refused": True}  # the user's to mend
        same = index.complete_with_key(key)  # this configuration already run by `dropdyn run` or a notebook
        if same is not None and same != folder.resolve():
            with RunFolder(folder) as copy:
                shutil.copytree(same, copy.tmp, dirs_exist_ok=True)
            index.finish(run_id, key, exp, cfg, _summary_of(folder), sweep=task.get("sweep"))
            return {"key": key, "status": "complete", "skipped": True, "reused": index.run_id(same)}
        if index.claim(run_id, key, exp, cfg, task.get("sweep")):
            break
        if not told:  # a live process (an overlapping sweep) computes this point: wait for its folder, saying so
            told = _waiting(index, run_id, root)
        time.sleep(0.5)
    t0 = time.perf_counter()
    try:
        experiment = get(exp)
        with using(task.get("threads", 1)):  # every point with the same count, whatever its executor
            seconds = conduct(experiment, experiment.resolve(cfg), folder, Entry(index, run_id, key, task.get("sweep")),
                              params=cfg, claimed=True, ctx=Context(root))[1]
    except Exception as e:
        if _summary_of(folder) is None:
            error = describe(e)
            index.fail(run_id, key, exp, cfg, error, sweep=task.get("sweep"))  # (also when refused before computing)
            return {"key": key, "status": "failed", "error": error, "traceback": traceback.format_exc(),
                    "refused": isinstance(e, InputError)}
        seconds = time.perf_counter() - t0  # a concurrent sweep completed the same point meanwhile: it is complete
        index.finish(run_id, key, exp, cfg, _summary_of(folder), sweep=task.get("sweep"), seconds=seconds)
    return {"key": key, "status": "complete", "skipped": False, "seconds": seconds}


def _waiting(index: RunIndex, run_id: str, root: Path) -> bool:
    """Say, once, which process a point waits for (until it finishes, or its claim expires)."""
    holder = index.rows(run_id=run_id)
    who = f"process {holder[0]['pid']} on {holder[0]['host']}" if holder else "another process"
    print(f"dropdyn: point {run_id} is being computed by {who}; waiting for it to finish, or for its claim to "
          f"expire {CLAIM_TTL:.0f} s after its last heartbeat (dropdyn runs show {run_id} --store "
          f"{shlex.quote(str(root))})", file=sys.stderr, flush=True)
    return True


class Interrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C (SIGINT): its message says how far it got."""


@dataclass
class SweepResult:
    sweep: Sweep
    root: Path
    outcomes: dict[str, dict]  # key -> run_point's answer

    def count(self, status: str, skipped: bool | None = None) -> int:
        return sum(o["status"] == status and (skipped is None or o.get("skipped") == skipped)
                   for o in self.outcomes.values())


def _tasks(sweep: Sweep, root: Path, threads: int) -> list[dict]:
    """One task per point, the costliest first where the experiment estimates costs
    (``cost(config)``): longest-processing-time-first keeps parallel workers busy to the end."""
    tasks = [{"experiment": sweep.experiment, "config": cfg, "key": key, "root": str(Path(root).resolve()),
              "sweep": sweep.name, "threads": threads} for cfg, key in zip(sweep.configs, sweep.keys, strict=True)]
    cost = get(sweep.experiment).cost
    return sorted(tasks, key=lambda t: -cost(t["config"])) if cost else tasks


def _failed(task: dict, e: BaseException) -> dict:
    """The outcome of a point that its executor lost (a killed worker or pool)."""
    return {"key": task["key"], "status": "failed", "error": describe(e), "lost": True}


def _serial(tasks, **_):
    for t in tasks:
        yield t, run_point(t)


def _worker_init(parent: int) -> None:
    """Pool worker initialiser. The driver owns interruption: a Ctrl-C, which the terminal
    sends to the whole process group, is ignored here, and the driver ends its workers
    itself (``_processes``). A watchdog thread ends this worker once its driver is gone
    (killed with SIGKILL, say), instead of leaving it waiting for work forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="dropdyn-parent-watchdog").start()


def _processes(tasks, *, workers: int, **_):
    """Points on a pool of spawned processes. Interrupted (Ctrl-C, or closed before its end),
    it cancels the points not started and ends the workers at once: their points' partial
    folders go with the next run in the store, and those points are computed again then."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(run_point, t): t for t in tasks}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as e:  # noqa: BLE001 - a broken pool fails each lost point, recorded below
                yield futures[fut], _failed(futures[fut], e)
    except BaseException:
        # Left alone, the pool would run every queued point before the interpreter could exit.
        # ProcessPoolExecutor.terminate_workers() does this from Python 3.14.
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(cancel_futures=True)


def _dask(tasks, *, workers: int, scheduler: str | None, **_):
    """Points as Dask tasks. A worker that dies mid-point is replaced and its point rerun
    by the scheduler (up to ``distributed.scheduler.allowed-failures`` times, then
    ``KilledWorker``, which is recorded as the point's failure)."""
    import sys

    import dask
    import torch
    from distributed import Client, LocalCluster, as_completed

    from .dask_worker import IgnoreInterrupt

    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            # Dask's default worker environment sets MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive
            # mmap threshold: every large tensor then costs fresh page faults (measured: Dask 0.84x serial
            # instead of ~1.9x on 2 workers). Keep the one-thread BLAS settings, drop that one.
            # Workers forked from this process start with torch already imported: the cluster is ready in
            # ~1.9 s instead of ~4.9 s with spawned interpreters (start, torch import, shutdown; measured on
            # 2 cores). Not after CUDA is initialised here (a forked child cannot use it), nor off Linux.
            # The workers' statistical profiler samples the running task's stack every 10 ms; with it,
            # each point ran ~15% slower (sum of point times on 2 workers: 80.8 s with, 69.4 s without).
            # Worker saturation 1.0 keeps the other points queued on the scheduler, so each worker that
            # frees up takes the costliest point left (the default 1.1 gives a 1-thread worker two at once).
            method = "fork" if sys.platform == "linux" and not torch.cuda.is_initialized() else "spawn"
            with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENV,
                                  "distributed.worker.multiprocessing-method": method,
                                  "distributed.worker.profile.enabled": False,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR,
                                       plugins=(IgnoreInterrupt(),))
            client = Client(cluster)
    except (OSError, ValueError) as e:  # (a malformed address is a ValueError)
        raise InputError(f"cannot reach the Dask scheduler {scheduler or 'LocalCluster'}: {e}") from None
    with _quiet_after_interrupt():
        try:
            futures = {client.submit(run_point, t, key=f"dropdyn-{t['experiment']}-{t['key']}", pure=False): t
                       for t in tasks}
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except Exception as e:  # noqa: BLE001 - KilledWorker and the like: the point is recorded failed
                    yield futures[fut], _failed(futures[fut], e)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _quiet_after_interrupt():
    """While a Dask sweep runs in this (main) thread: on SIGINT, silence logging before the
    KeyboardInterrupt is raised. The client's event loop then logs the cancellation it was
    asked for as errors — at times a NameError from ``distributed.utils.sync`` when the
    interrupt lands before its future exists (distributed 2026.8), and "Couldn't gather
    keys" — noise about the interrupt itself, which the one line ``interrupted: …`` already
    reports. A handler, not an ``except``: the loop's thread logs as soon as the interrupt
    reaches ``sync``, before any ``except`` here could run. The handler then calls the one it
    replaced; on leaving the block (after the cluster is closed) that handler and the logging
    level are put back. Only over a Python handler (normally the one that raises
    KeyboardInterrupt): an ignored or default SIGINT stays as it was."""
    disabled = logging.root.manager.disable
    previous = signal.getsignal(signal.SIGINT)
    replace = threading.current_thread() is threading.main_thread() and callable(previous)

    def interrupted(signum, frame):
        logging.disable(logging.CRITICAL)
        previous(signum, frame)

    if replace:
        signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        if replace:
            signal.signal(signal.SIGINT, previous)
        logging.disable(disabled)


def run_sweep(sweep: Sweep, root: Path | str = "runs", *, executor: str = "serial", workers: int = 2,
              scheduler: str | None = None, threads: int = 1, progress: bool = False) -> SweepResult:
    """Run every point not yet complete; returns what happened to each point."""
    from tqdm import tqdm

    from .._checks import check_choice, check_int

    check_choice("executor", executor, EXECUTORS)
    check_int("workers", workers, 1)
    check_int("threads", threads, 1)
    if scheduler and executor != "dask":
        raise InputError(f"--scheduler needs --executor dask, got executor {shown(executor)}")
    most = 4 * len(available_cpus())  # local workers: each a process of its own
    if executor != "serial" and not scheduler and workers > most:
        raise InputError(f"workers must be at most {most} (4 for each CPU this process may use), got {workers}")
    root = Path(root)
    folder = root / "sweeps" / sweep.name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "sweep.json", json.dumps(
        {"experiment": sweep.experiment, "name": sweep.name, "base": sweep.base, "points": sweep.points,
         "keys": sweep.keys}, indent=2, default=str).encode())
    index = RunIndex(root)
    runner = {"serial": _serial, "processes": _processes, "dask": _dask}[executor]
    outcomes: dict[str, dict] = {}
    try:
        # closing(): an interrupt raised here rather than inside the runner still stops its workers at once
        with tqdm(total=len(sweep.keys), desc=f"sweep {sweep.name}", unit="point", disable=not progress) as bar, \
                contextlib.closing(runner(_tasks(sweep, root, threads), workers=workers, scheduler=scheduler)) as run:
            for task, outcome in run:
                if outcome.get("lost"):
                    if _summary_of(root / task["experiment"] / task["key"]) is not None:  # it finished after all
                        outcome = {"key": task["key"], "status": "complete", "skipped": False}
                    else:
                        index.fail(f"{task['experiment']}/{task['key']}", task["key"], task["experiment"],
                                   task["config"], outcome["error"], sweep=sweep.name)
                outcomes[task["key"]] = outcome
                bar.update()
    except KeyboardInterrupt:
        complete = sum(_summary_of(root / sweep.experiment / key) is not None for key in sweep.keys)
        raise Interrupted(f"sweep {sweep.name}: {complete} of {len(sweep.keys)} points complete in '{root}'; "
                          "the same command resumes") from None
    return SweepResult(sweep, root, outcomes)


def run_children(sweep: Sweep, ctx, noun: str = "points") -> tuple[list[dict], int]:
    """For experiments built on sweeps: run (or resume) ``sweep`` in the store ``ctx.store``
    on ``ctx``'s executor; the points' summaries in order, and how many were computed now.
    A failed point fails the parent (the others stay in the store; a re-run resumes)."""
    result = run_sweep(sweep, ctx.store, executor=ctx.executor, workers=ctx.workers, scheduler=ctx.scheduler,
                       progress=ctx.progress)
    failed = [o for o in result.outcomes.values() if o["status"] == "failed"]
    if failed:
        # refused settings (a width too large, say) or a damaged point folder are the user's to fix: one line,
        # as for the parent's own
        raise (InputError if all(o.get("refused") for o in failed) else RuntimeError)(
            f"{len(failed)} of {len(sweep.keys)} {noun} failed (first: {failed[0]['error']}); "
            "the others are kept in the store and a re-run resumes")
    rows = [json.loads((Path(ctx.store) / sweep.run_id(i) / "summary.json").read_text())
            for i in range(len(sweep.keys))]
    return rows, result.count("complete", skipped=False)


def collect(sweep: Sweep, root: Path | str = "runs") -> list[dict]:
    """One row per point: run id, status, error, the swept settings, the scalar summary
    without wall times (``seconds``)."""
    root = Path(root)
    by_id = {r["id"]: r for r in RunIndex(root).rows(experiment=sweep.experiment)}
    rows = []
    for i, key in enumerate(sweep.keys):
        run_id = sweep.run_id(i)
        summary = _summary_of(root / run_id)
        entry = by_id.get(run_id, {})
        status = "complete" if summary is not None else entry.get("status", "missing")
        row = {"point": i, "run_id": run_id, "key": key, "status": status,
               "error": entry.get("error") if summary is None else None}
        row.update({k: as_text(v) if isinstance(v := sweep.configs[i][k], (list, tuple)) else v for k in sweep.swept})
        # wall time is left out (it is in the index, `dropdyn runs list`): the table depends on the
        # computation alone, and is byte-identical across executors
        row.update({k: v for k, v in scalar_summary(summary or {}).items() if k.rsplit(".", 1)[-1] != "seconds"})
        rows.append(row)
    return rows


def as_sweep(sweep, root: Path | str = "runs") -> Sweep:
    """``sweep`` as a :class:`Sweep`: a Sweep itself, the path of a sweep file (YAML/TOML,
    :func:`load_sweep`), or the name of a sweep run in the store ``root`` (its
    ``sweeps/NAME/sweep.json``)."""
    if isinstance(sweep, Sweep):
        return sweep
    if not isinstance(sweep, (str, os.PathLike)) or not str(sweep).strip():
        raise InputError(f"a sweep is a Sweep, a sweep file or a sweep's name, got {shown(sweep)}")
    if Path(sweep).suffix in (".yaml", ".yml", ".toml"):
        return load_sweep(sweep)
    spec = read_json(Path(root) / "sweeps" / str(sweep) / "sweep.json")
    if not (isinstance(spec, dict) and isinstance(spec.get("points"), list) and "experiment" in spec):
        raise InputError(f"no sweep {str(sweep)!r}: neither a sweep file (.yaml, .yml, .toml) nor a sweep run in the "
                         f"store {str(root)!r}")
    return make_sweep({"experiment": spec["experiment"], "base": spec.get("base") or {}, "list": spec["points"]},
                      name=str(spec.get("name", sweep)), where=f"sweep {sweep}")


def results(sweep, root: Path | str = "runs"):
    """A sweep's results (:func:`collect`) as a pandas DataFrame, one row per point. ``sweep``:
    a Sweep, a sweep file or a sweep's name (:func:`as_sweep`)."""
    import pandas as pd

    return pd.DataFrame(collect(as_sweep(sweep, root), root))


def curves(sweep, root: Path | str = "runs"):
    """Every complete point's tables (the CSV files of its run folder, e.g. ``metrics.csv``)
    as one long pandas DataFrame: each table's columns, and ``point``, ``run_id``, ``table``
    (the CSV's name) and the swept settings as columns — one call for curves across a sweep.
    ``sweep``: a Sweep, a sweep file or a sweep's name (:func:`as_sweep`)."""
    import pandas as pd

    from .store import load

    sweep, root = as_sweep(sweep, root), Path(root)
    frames = []
    for i in range(len(sweep.keys)):
        folder = root / sweep.run_id(i)
        if _summary_of(folder) is None:
            continue
        swept = {k: sweep.configs[i][k] for k in sweep.swept}
        for name, table in load(folder).tables.items():
            frames.append(table.assign(point=i, run_id=sweep.run_id(i), table=name, **swept))
    if not frames:
        return pd.DataFrame(columns=["point", "run_id", "table", *sweep.swept])
    return pd.concat(frames, ignore_index=True)


def write_table(rows: list[dict], folder: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.parquet`` in ``folder`` (atomically). A column whose
    values mix numbers and text is written as text."""
    import csv
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {k: [r.get(k) for r in rows] for k in names}
    for k, vals in columns.items():
        kinds = {type(v) for v in vals if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            columns[k] = [None if v is None else str(v) for v in vals]
        elif kinds == {int, float}:
            columns[k] = [None if v is None else float(v) for v in vals]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(names)
    for i in range(len(rows)):
        w.writerow(["" if columns[k][i] is None else columns[k][i] for k in names])
    csv_path, pq_path = folder / "results.csv", folder / "results.parquet"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    atomic_write_bytes(pq_path, sink.getvalue().to_pybytes())
    return csv_path, pq_path
