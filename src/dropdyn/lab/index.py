"""The run index: one SQLite row per run of a store, read by ``dropdyn runs``.

A *store* is a folder (``runs/`` by default) holding run folders and ``index.sqlite``.
A run's folder is the truth — it appears atomically, complete, with its
``summary.json`` (``store.RunFolder``) — and the index is a fast catalogue of it:

    id          path of the run folder relative to the store (e.g. ``phase-cell/3fa2b1c9d0``)
    key         hash of (experiment, resolved config, dropdyn version)
    experiment  name;  params  resolved config (JSON);  sweep  sweep name or NULL
    status      running | complete | failed;  error  message of a failed run (a complete run
                whose folder inside the store is gone reads ``missing``)
    started, finished  UTC ISO times;  seconds  wall time
    summary     scalar summary metrics (JSON, nested keys joined by ".")

    pid, host  the process computing a ``running`` run (a run whose process is gone is
               reported ``failed``: "process … ended without finishing")

Writers are processes that may finish at the same moment (sweep workers, two sweeps
on one store): every write is one short ``BEGIN IMMEDIATE`` transaction in WAL mode
with a generous busy timeout, so they queue instead of failing. The store must be on
a local or POSIX-locking shared file system (SQLite's own requirement).

The index is a cache of the folders. A missing index is rebuilt from them; a corrupt
one is moved aside (``index.sqlite.corrupt-<time>``) and rebuilt, with a one-line
notice on stderr; ``dropdyn runs reindex`` does the same on demand. Reads never need
write access: on a read-only store they open the index read-only, or scan the folders.
Stored ids are paths relative to the store; none that leads outside it is followed.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from .._checks import InputError
from .host import process_alive
from .settings import as_text
from .store import clean_partials, read_json, run_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, key TEXT NOT NULL, experiment TEXT NOT NULL, params TEXT NOT NULL,
    sweep TEXT, status TEXT NOT NULL, error TEXT, started TEXT, finished TEXT, seconds REAL,
    summary TEXT, pid INTEGER, host TEXT, heartbeat TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep);
"""
COLUMNS = ("id", "key", "experiment", "params", "sweep", "status", "error", "started", "finished", "seconds",
           "summary", "pid", "host", "heartbeat")
LOCK_ATTEMPTS = 5  # a transaction that finds the index locked is tried this often, 0.2 s, 0.4 s, … apart
HEARTBEAT = 30.0  # seconds between two heartbeats of a running run (dropdyn.lab.lifecycle)
CLAIM_TTL = 150.0  # seconds without a heartbeat after which a running run's claim has expired


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def scalar_summary(summary: dict, prefix: str = "") -> dict:
    """The scalar entries of a summary, nested mappings flattened with ``.``; lists dropped."""
    out = {}
    for k, v in summary.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(scalar_summary(v, name + "."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[name] = v
    return out


class RunIndex:
    """The index of the store at ``root`` (created on first use)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.path = self.root / "index.sqlite"

    def _connect(self) -> sqlite3.Connection:
        """A read–write connection; a missing index is rebuilt from the folders, a corrupt one
        set aside and rebuilt."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"store {str(self.root)!r} is not a folder")
        if self.path.is_symlink():  # its writes would land in whatever database it points to
            raise InputError(f"the run index {str(self.path)!r} is a symbolic link: dropdyn writes only the store's "
                             "own index file")
        self.root.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0  # (a zero-byte index holds no rows)
        try:
            con = self._open()
        except sqlite3.DatabaseError as e:
            if not corrupt(e):  # a full disk or an I/O error: the index may be healthy, keep it
                raise
            self._set_aside(f"the run index {self.path} was unreadable ({e})")
            con, fresh = self._open(), True
        if fresh:
            self._fill(con, scan_folders(self.root))
        return con

    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 120000")
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript(SCHEMA)
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            for col, typ in (("pid", "INTEGER"), ("host", "TEXT"), ("heartbeat", "TEXT")):  # older indexes
                if col not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
        except sqlite3.DatabaseError:
            con.close()
            raise
        return con

    def _set_aside(self, reason: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"index.sqlite.corrupt-{stamp}")
        os.replace(self.path, aside)
        for extra in ("-wal", "-shm"):
            Path(f"{self.path}{extra}").unlink(missing_ok=True)
        print(f"dropdyn: {reason}; moved it to {aside.name} and rebuilt the index from the run folders",
              file=sys.stderr)

    def _fill(self, con: sqlite3.Connection, rows: list[dict]) -> None:
        con.execute("BEGIN IMMEDIATE")
        for r in rows:
            con.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        tuple(_stored(r)[c] for c in COLUMNS))
        con.execute("COMMIT")

    def reindex(self) -> int:
        """Rebuild the index from the run folders (the old file, if any, is set aside);
        removes partial folders of dead processes; returns the number of runs found."""
        clean_partials(self.root)
        if self.path.exists():
            self._set_aside(f"reindexing {self.path}")
        with closing(self._connect()) as con:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def _read(self, sql: str, args: tuple = ()) -> list[dict] | None:
        """Rows of a query, from a read–write connection where the store allows one (a missing
        index is built from the run folders), else a read-only one; None where none can be read,
        and where the folder holds no run (a read creates no index in a folder that is no store):
        then the folders are the answer."""
        if self.path.is_symlink() or not self.path.is_file() and not scan_folders(self.root):
            return None  # (a linked index is not read either: the folders are the answer)
        writable = os.access(self.root, os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))
        try:
            con = self._connect() if writable else sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        except (sqlite3.DatabaseError, OSError):
            return None
        try:
            with closing(con):
                con.row_factory = sqlite3.Row
                return [dict(r) for r in con.execute(sql, args)]
        except sqlite3.DatabaseError:
            return None

    def _transaction(self, body):
        """``body(con)`` inside one ``BEGIN IMMEDIATE`` transaction (committed unless it raises),
        retried when the database is locked; returns what ``body`` returns."""
        for attempt in range(LOCK_ATTEMPTS):  # busy_timeout covers ordinary contention; this, WAL recovery races
            try:
                with closing(self._connect()) as con:
                    con.execute("BEGIN IMMEDIATE")
                    try:
                        out = body(con)
                    except BaseException:
                        con.execute("ROLLBACK")
                        raise
                    con.execute("COMMIT")
                return out
            except sqlite3.DatabaseError as e:
                if corrupt(e) and attempt == 0:  # damaged past the pages read when it was opened (a torn write)
                    self._set_aside(f"the run index {self.path} was damaged ({e})")
                    continue
                if "locked" not in str(e) and "busy" not in str(e) or attempt == LOCK_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _write(self, sql: str, args: tuple) -> None:
        self._transaction(lambda con: con.execute(sql, args))

    def run_id(self, folder: Path) -> str:
        """The id of a run folder: its path relative to the store, or absolute outside it."""
        folder = Path(folder).resolve()
        try:
            return folder.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return folder.as_posix()

    START = ("INSERT INTO runs (id, key, experiment, params, sweep, status, started, pid, host, heartbeat) "
             "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status='running', "
             "error=NULL, started=excluded.started, finished=NULL, seconds=NULL, summary=NULL, "
             "pid=excluded.pid, host=excluded.host, heartbeat=excluded.heartbeat, "
             "sweep=COALESCE(excluded.sweep, runs.sweep)")

    def _start_args(self, run_id, key, experiment, params, sweep) -> tuple:
        t = now()
        return (run_id, key, experiment, json.dumps(params, sort_keys=True, default=str), sweep, t, os.getpid(),
                socket.gethostname(), t)

    def beat(self, run_id: str) -> None:
        """This process still computes run ``run_id``: renew its claim (see :func:`_alive`)."""
        self._write("UPDATE runs SET heartbeat = ? WHERE id = ? AND status = 'running' AND pid = ? AND host = ?",
                    (now(), run_id, os.getpid(), socket.gethostname()))

    def start(self, run_id: str, key: str, experiment: str, params: dict, sweep: str | None = None) -> None:
        """Mark a run as running (a re-run of a failed or interrupted one resets it)."""
        self._write(self.START, self._start_args(run_id, key, experiment, params, sweep))

    def claim(self, run_id: str, key: str, experiment: str, params: dict, sweep: str | None = None) -> bool:
        """Mark a run as running by this process unless a live process already runs it; the
        check and the mark are one transaction, so two sweeps never compute one point at once.
        True if claimed."""

        def body(con) -> bool:
            row = con.execute("SELECT status, pid, host, heartbeat FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row and row[0] == "running" and _alive(row[1], row[2], row[3]) and row[1] != os.getpid():
                return False
            con.execute(self.START, self._start_args(run_id, key, experiment, params, sweep))
            return True

        return self._transaction(body)

    def finish(self, run_id: str, key: str, experiment: str, params: dict, summary: dict, *,
               sweep: str | None = None, seconds: float | None = None) -> None:
        """Mark a run complete with its summary (inserting the row if ``start`` was missed)."""
        self._write("INSERT INTO runs (id, key, experiment, params, sweep, status, finished, seconds, summary) "
                    "VALUES (?, ?, ?, ?, ?, 'complete', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "status='complete', error=NULL, finished=excluded.finished, "
                    "seconds=COALESCE(excluded.seconds, runs.seconds), summary=excluded.summary, "
                    "sweep=COALESCE(excluded.sweep, runs.sweep)",
                    (run_id, key, experiment, json.dumps(params, sort_keys=True, default=str), sweep, now(), seconds,
                     json.dumps(scalar_summary(summary), default=str)))

    def fail(self, run_id: str, key: str, experiment: str, params: dict, error: str, *,
             sweep: str | None = None) -> None:
        self._write("INSERT INTO runs (id, key, experiment, params, sweep, status, error, finished) "
                    "VALUES (?, ?, ?, ?, ?, 'failed', ?, ?) ON CONFLICT(id) DO UPDATE SET status='failed', "
                    "error=excluded.error, finished=excluded.finished, sweep=COALESCE(excluded.sweep, runs.sweep)",
                    (run_id, key, experiment, json.dumps(params, sort_keys=True, default=str), sweep, error, now()))

    def rows(self, *, experiment: str | None = None, status: str | None = None, sweep: str | None = None,
             run_id: str | None = None, key: str | None = None) -> list[dict]:
        """Rows (as dicts, ``params``/``summary`` decoded), oldest first, filtered in SQL (the
        id and key columns are indexed). A ``running`` row whose process is gone reads as
        ``failed``."""
        given = {c: v for c, v in (("experiment", experiment), ("sweep", sweep), ("id", run_id), ("key", key))
                 if v is not None}
        where = " WHERE " + " AND ".join(f"{c} = ?" for c in given) if given else ""
        raw = self._read("SELECT * FROM runs" + where, tuple(given.values()))
        try:
            rows = None if raw is None else [_decoded(r) for r in raw]
        except (TypeError, ValueError, RecursionError) as e:  # rows edited or damaged: rebuild the cache
            rows = None
            if os.access(self.root, os.W_OK):
                self._set_aside(f"the run index {self.path} holds an unreadable row ({e})")
                self._connect().close()
        if rows is None:
            rows = [r for r in scan_folders(self.root) if all(r[c] == v for c, v in given.items())]
        for r in rows:
            if r["status"] == "running" and not _alive(r.get("pid"), r.get("host"), r.get("heartbeat")):
                r["status"] = "failed"
                r["error"] = f"process {r.get('pid')} on {r.get('host')} ended without finishing"
            elif r["status"] == "complete" and (folder := self.folder(r["id"])) is not None and not folder.is_dir():
                r["status"] = "missing"  # its folder was deleted by hand: the index is a cache of the folders
                r["error"] = f"its folder {str(folder)!r} is gone"
        rows = [r for r in rows if status is None or r["status"] == status]
        return sorted(rows, key=lambda r: (r["started"] or r["finished"] or "", r["id"]))

    def status(self, run_id: str) -> str | None:
        """The status of run ``run_id``, or None if the index has no such row."""
        found = self.rows(run_id=run_id)
        return found[0]["status"] if found else None

    def get(self, ref: str) -> dict:
        """The run whose id is ``ref``, or whose id or key starts with it (must be unique)."""
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(f"a run reference must name a run (an id, a key or a prefix of one), got {ref!r}")
        rows = self.rows()
        exact = [r for r in rows if r["id"] == ref]
        found = exact or [r for r in rows if r["id"].startswith(ref) or r["key"].startswith(ref)
                          or r["id"].rsplit("/", 1)[-1].startswith(ref)]
        if not found:
            raise InputError(f"no run {ref!r} in the store {str(self.root)!r}")
        if len(found) > 1:
            raise InputError(f"{ref!r} matches {len(found)} runs ({', '.join(r['id'] for r in found[:4])}, …); "
                             "give more of it")
        return found[0]

    def complete_with_key(self, key: str) -> Path | None:
        """The folder of a complete run with this key inside the store (a CLI or notebook run
        of the same configuration), or None."""
        for r in self.rows(key=key, status="complete"):
            folder = self.folder(r["id"])
            if folder is not None and (folder / "summary.json").is_file():
                return folder
        return None

    def folder(self, run_id: str) -> Path | None:
        """The folder of a run inside the store, or None if ``run_id`` leads outside it (an
        absolute id from ``--out`` elsewhere, or a tampered one like ``../victim``)."""
        root = self.root.resolve()
        folder = (root / run_id).resolve()
        return folder if folder != root and folder.is_relative_to(root) else None

    def remove(self, ref: str) -> dict:
        """Delete a run's row and, if it lies inside the store, its folder; returns the
        removed row (``folder_removed`` says which). ``ref`` is a whole id, key or folder name:
        a prefix of one is refused, naming the run it would remove."""
        import shutil

        row = self.get(ref)
        if ref not in (row["id"], row["key"], row["id"].rsplit("/", 1)[-1]):
            raise InputError(f"{ref!r} is only the start of run {row['id']!r}; give its full id to remove it")
        folder = self.folder(row["id"])
        self._write("DELETE FROM runs WHERE id = ?", (row["id"],))
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return {**row, "folder_removed": folder is not None}

    def integrity(self) -> str:
        with closing(self._connect()) as con:
            return con.execute("PRAGMA integrity_check").fetchone()[0]


def table(store="runs"):
    """The index of a store as a pandas DataFrame: one row per run, the summary's scalars
    as ``summary.<name>`` columns, the resolved settings as ``params.<name>`` (a list setting
    as its comma text)."""
    import pandas as pd

    if not Path(store).is_dir():
        raise InputError(f"no store {str(store)!r}: no such folder")
    rows = RunIndex(store).rows()
    flat = [{**{k: v for k, v in r.items() if k not in ("params", "summary")},
             **{f"params.{k}": v for k, v in scalar_summary(r["params"]).items()},
             **{f"params.{k}": as_text(v) for k, v in r["params"].items() if isinstance(v, list)},
             **{f"summary.{k}": v for k, v in r["summary"].items()}} for r in rows]
    return pd.DataFrame(flat, columns=None if flat else list(COLUMNS))


def utf8(name: str) -> bool:
    """Whether a file name (decoded from the file system, bad bytes as surrogates) is UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def corrupt(e: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the file is damaged or no database (not locked, full or
    failing I/O, which are OperationalErrors about a file that may be healthy)."""
    return not isinstance(e, sqlite3.OperationalError)


def _alive(pid, host, heartbeat: str | None = None) -> bool:
    """Whether process ``pid`` on ``host`` may still run its run: not if its last heartbeat
    (a run's process renews it every :data:`HEARTBEAT` s) is older than :data:`CLAIM_TTL`
    s — a lost node, a killed process or a reused pid; else checked on this host, assumed
    elsewhere. Hosts' clocks must agree within a minute or so."""
    if heartbeat is not None and _age(heartbeat) > CLAIM_TTL:
        return False
    if pid is None or host not in (None, socket.gethostname()):
        return pid is not None
    return process_alive(pid)


def _age(stamp: str) -> float:
    """Seconds since the UTC ISO time ``stamp`` (an unreadable one counts as infinitely old)."""
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()
    except (TypeError, ValueError):
        return float("inf")


def _decoded(r: dict) -> dict:
    """A row with ``params`` and ``summary`` decoded; ValueError if either is not a JSON object."""
    r["params"] = json.loads(r["params"])
    r["summary"] = json.loads(r["summary"]) if r["summary"] else {}
    if not (isinstance(r["params"], dict) and isinstance(r["summary"], dict)):
        raise ValueError(f"row {r['id']!r} does not hold JSON objects")
    return r


def _stored(r: dict) -> dict:
    return {**{c: None for c in COLUMNS}, **r, "params": json.dumps(r["params"], sort_keys=True, default=str),
            "summary": json.dumps(r["summary"], default=str)}


def scan_folders(root: Path) -> list[dict]:
    """Index rows rebuilt from the run folders of a store: ``<experiment>/<name>/config.json``
    (complete when ``summary.json`` is there), sweep membership from ``sweeps/*/sweep.json``."""
    root = Path(root)
    if not root.is_dir():
        return []
    sweeps = {}
    for spec_path in sorted(root.glob("sweeps/*/sweep.json")):
        spec = read_json(spec_path)
        if isinstance(spec, dict) and isinstance(spec.get("keys"), list):
            sweeps.update({f"{spec.get('experiment')}/{k}": spec_path.parent.name for k in spec["keys"]})
    rows = []
    for cfg_path in sorted(root.glob("*/*/config.json")):
        folder = cfg_path.parent
        if folder.name.startswith(".") or folder.parent.name == "sweeps":
            continue
        meta = read_json(cfg_path)
        if not (isinstance(meta, dict) and isinstance(meta.get("config"), dict) and meta.get("experiment")):
            continue
        summary = read_json(folder / "summary.json")
        run_id = folder.relative_to(root).as_posix()
        if not utf8(run_id):  # a folder named by hand with bytes no id can hold: not a run of this store
            continue
        done = isinstance(summary, dict)
        finished = datetime.fromtimestamp((folder / "summary.json").stat().st_mtime, timezone.utc) if done else None
        rows.append({"id": run_id, "key": run_key(meta["experiment"], meta["config"]),
                     "experiment": meta["experiment"], "params": meta["config"], "sweep": sweeps.get(run_id),
                     "status": "complete" if done else "failed", "error": None if done else "no summary.json",
                     "started": meta.get("started"),
                     "finished": finished and finished.isoformat(timespec="milliseconds"),
                     "seconds": summary.get("seconds") if done else None,
                     "summary": scalar_summary(summary) if done else {}})
    return rows
