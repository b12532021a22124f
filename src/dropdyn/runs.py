"""The run index: one SQLite row per run of a store, read by ``dropdyn runs``.

A *store* is a folder (``runs/`` by default) holding run folders and ``index.sqlite``.
A run's folder is the truth — it appears atomically, complete, with its
``summary.json`` (``store.RunFolder``) — and the index is a fast catalogue of it:

    id          path of the run folder relative to the store (e.g. ``phase-cell/3fa2b1c9d0``)
    key         hash of (experiment, resolved config, dropdyn version)
    experiment  name;  params  resolved config (JSON);  sweep  sweep name or NULL
    status      running | complete | failed;  error  message of a failed run
    started, finished  UTC ISO times;  seconds  wall time
    summary     scalar summary metrics (JSON, nested keys joined by ".")

Writers are processes that may finish at the same moment (sweep workers, two sweeps
on one store): every write is one short ``BEGIN IMMEDIATE`` transaction in WAL mode
with a generous busy timeout, so they queue instead of failing. The store must be on
a local or POSIX-locking shared file system (SQLite's own requirement).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from ._checks import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, key TEXT NOT NULL, experiment TEXT NOT NULL, params TEXT NOT NULL,
    sweep TEXT, status TEXT NOT NULL, error TEXT, started TEXT, finished TEXT, seconds REAL,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep);
"""
STATUSES = ("running", "complete", "failed")
COLUMNS = ("id", "key", "experiment", "params", "sweep", "status", "error", "started", "finished", "seconds",
           "summary")


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
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 120000")
        con.execute("PRAGMA journal_mode = WAL")
        con.executescript(SCHEMA)
        return con

    def _write(self, sql: str, args: tuple) -> None:
        for attempt in range(5):  # busy_timeout covers ordinary contention; this covers WAL recovery races
            try:
                with closing(self._connect()) as con:
                    con.execute("BEGIN IMMEDIATE")
                    con.execute(sql, args)
                    con.execute("COMMIT")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def run_id(self, folder: Path) -> str:
        """The id of a run folder: its path relative to the store, or absolute outside it."""
        folder = Path(folder).resolve()
        try:
            return folder.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return folder.as_posix()

    def start(self, run_id: str, key: str, experiment: str, params: dict, sweep: str | None = None) -> None:
        """Mark a run as running (a re-run of a failed or interrupted one resets it)."""
        self._write("INSERT INTO runs (id, key, experiment, params, sweep, status, started) "
                    "VALUES (?, ?, ?, ?, ?, 'running', ?) ON CONFLICT(id) DO UPDATE SET status='running', "
                    "error=NULL, started=excluded.started, finished=NULL, seconds=NULL, summary=NULL, "
                    "sweep=COALESCE(excluded.sweep, runs.sweep)",
                    (run_id, key, experiment, json.dumps(params, sort_keys=True, default=str), sweep, now()))

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

    def rows(self, *, experiment: str | None = None, status: str | None = None, sweep: str | None = None) -> list[dict]:
        """Rows (as dicts, ``params``/``summary`` decoded), oldest first."""
        if not self.path.exists():
            return []
        where, args = [], []
        for col, val in (("experiment", experiment), ("status", status), ("sweep", sweep)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        with closing(self._connect()) as con:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute(sql + " ORDER BY COALESCE(started, finished), id", args)]
        for r in rows:
            r["params"] = json.loads(r["params"])
            r["summary"] = json.loads(r["summary"]) if r["summary"] else {}
        return rows

    def status(self, run_id: str) -> str | None:
        """The status of run ``run_id``, or None if the index has no such row."""
        if not self.path.exists():
            return None
        with closing(self._connect()) as con:
            row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def get(self, ref: str) -> dict:
        """The run whose id is ``ref``, or whose id or key starts with it (must be unique)."""
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

    def remove(self, ref: str) -> dict:
        """Delete a run's row and its folder; returns the removed row."""
        row = self.get(ref)
        folder = Path(row["id"]) if Path(row["id"]).is_absolute() else self.root / row["id"]
        self._write("DELETE FROM runs WHERE id = ?", (row["id"],))
        shutil.rmtree(folder, ignore_errors=True)
        return row

    def integrity(self) -> str:
        with closing(self._connect()) as con:
            return con.execute("PRAGMA integrity_check").fetchone()[0]
