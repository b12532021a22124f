"""Run folders: resolved config with versions, metrics as CSV, arrays as ``.npz``,
figures — all written atomically.

A run is assembled in a hidden temporary folder beside its destination
(``.NAME.partial-<pid>-…``, removed by the next run in that store once its process is
gone) and renamed into place only when complete, so a killed process never leaves a
half-written run that looks finished. A complete folder is never overwritten, not even
by a concurrent writer of the same run; ``force`` replaces only a folder that is
recognisably a run folder (its ``config.json`` names an experiment and a config).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import platform
import secrets
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._checks import InputError
from .host import process_alive


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


NPZ_KEY = ((", ", "_"), (" · ", "__"), ("/", "__"), (" ", "_"), ("=", ""))


def npz_key(name: str) -> str:
    """An ``arrays.npz`` key for a result name: ``"lr=0.05, keep=0.5 · layer 1"`` →
    ``"lr0.05_keep0.5__layer_1"``, ``"practical/dropout/time"`` → ``"practical__dropout__time"``."""
    for old, new in NPZ_KEY:
        name = name.replace(old, new)
    return name


def strict_json(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    return obj


@dataclass
class Run:
    """A run folder, loaded: ``config`` (resolved), ``summary``, ``tables`` (each CSV as a
    pandas DataFrame, by file stem), ``arrays`` (``arrays.npz``), ``meta`` (versions, seed,
    threads, start time). ``metrics`` is the main table."""

    path: Path
    experiment: str
    config: dict
    summary: dict
    tables: dict
    arrays: dict
    meta: dict

    def __repr__(self) -> str:
        """A few lines (the tables and arrays by name and size, not their contents)."""
        tables = ", ".join(f"{k} ({len(v)} rows)" for k, v in self.tables.items()) or "none"
        arrays = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(self.arrays.items())[:8]) or "none"
        more = f" and {len(self.arrays) - 8} more" if len(self.arrays) > 8 else ""
        return (f"Run({self.experiment!r} at {str(self.path)!r}: {len(self.config)} settings, "
                f"{len(self.summary)} summary entries; tables: {tables}; arrays: {arrays}{more})")

    @property
    def metrics(self):
        """``metrics.csv`` as a DataFrame (or the run's only table; None if it has none or several)."""
        if "metrics" in self.tables:
            return self.tables["metrics"]
        return next(iter(self.tables.values())) if len(self.tables) == 1 else None


def load(path) -> Run:
    """``dropdyn.load("runs/teacher-student/…")``: a run folder's config, summary, tables and
    arrays in one object."""
    import pandas as pd

    path = Path(path)
    if not is_run_folder(path):
        raise InputError(f"{str(path)!r} is not a run folder (no config.json naming an experiment)")
    meta = read_json(path / "config.json")
    summary = read_json(path / "summary.json") or {}
    tables = {p.stem: _read(p, pd.read_csv) for p in sorted(path.glob("*.csv")) if regular_file(p)}
    arrays = {}
    if regular_file(path / "arrays.npz"):
        arrays = _read(path / "arrays.npz", _read_npz)
    return Run(path, meta["experiment"], meta["config"], summary, tables, arrays,
               {k: v for k, v in meta.items() if k not in ("experiment", "config")})


def _read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _read(path: Path, reader):
    """``reader(path)``; a damaged file (cut short, edited, not what its name says) is an
    ``InputError`` that names it."""
    try:
        return reader(path)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:  # pandas' and decoding errors are ValueErrors
        raise InputError(f"{str(path)!r} cannot be read ({type(e).__name__}: {' '.join(str(e).split())})") from e


def config_key(config: dict) -> str:
    """Short stable hash of a resolved configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def run_key(experiment: str, config: dict) -> str:
    """Store key of a run: hash of the experiment, its resolved config and dropdyn's version."""
    from .._version import __version__

    return config_key({"experiment": experiment, "config": config, "dropdyn": __version__})


def regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file itself: not a symbolic link (whose target may lie
    anywhere), a FIFO (whose read would wait forever) or a device."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_json(path: Path):
    """The JSON document at ``path``, or None if it is missing, no regular file
    (:func:`regular_file`) or unreadable (nested deeper than the parser recurses, too)."""
    if not regular_file(path):
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is recognisably a dropdyn run folder (``--force`` may replace it)."""
    meta = read_json(Path(path) / "config.json")
    return isinstance(meta, dict) and isinstance(meta.get("config"), dict) and isinstance(meta.get("experiment"), str)


def partial_owner(path: Path) -> int | None:
    """The pid in a partial folder's name ``.NAME.partial-<pid>-…``, or None."""
    head = Path(path).name.rsplit(".partial-", 1)[-1].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def versions() -> dict:
    """Versions of dropdyn, Python and the main dependencies."""
    import torch

    from .._version import __version__

    return {"dropdyn": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


class RunFolder:
    """A run being written. Use as a context manager; on success the folder appears at
    ``path`` atomically, on an exception nothing appears there.

        with RunFolder(path, force=False) as run:
            run.write_json("config.json", cfg); run.write_csv(...); run.savefig(...)
    """

    def __init__(self, path: Path, *, force: bool = False, on_enter=None):
        self.path = Path(path)
        for p in (self.path, *self.path.parents):
            if p.exists() and not p.is_dir():
                raise InputError(f"cannot create run folder {str(self.path)!r}: {str(p)!r} is a file")
        if self.path.exists() and any(self.path.iterdir()):
            if not force:
                raise InputError(f"run folder {self.path} already exists; use --force to overwrite it")
            if not is_run_folder(self.path):
                raise InputError(f"--force replaces only run folders, and {str(self.path)!r} is not one (no "
                                 "config.json naming an experiment): refusing to delete it")
        self.force = force
        self.on_enter = on_enter
        self.tmp: Path | None = None

    def __enter__(self) -> RunFolder:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_partials(self.path.parent, ".*.partial-*")  # this folder's siblings only: nothing outside it
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.partial-{os.getpid()}-"))
        except OSError as e:  # named by the folder asked for, not by its hidden partial sibling
            raise InputError(f"cannot create run folder {str(self.path)!r}: {e.strerror or e}") from e
        self.tmp.chmod(0o755)
        if self.on_enter is not None:
            self.on_enter(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                                             or str(exc.filename or "").startswith(str(self.tmp))):
                # a full disk names no file, and a write names the hidden partial folder: name the one asked for
                raise InputError(f"cannot write run folder {str(self.path)!r}: {exc.strerror or exc}") from exc
            return
        if self.force and self.path.exists() and is_run_folder(self.path):
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            shutil.rmtree(old, ignore_errors=True)
        try:  # rename(2) onto a non-empty folder fails: a folder completed meanwhile is never overwritten
            os.rename(self.tmp, self.path)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise InputError(f"run folder {self.path} was completed by another process meanwhile; it is kept and "
                             "this run's copy discarded") from None

    def file(self, name: str) -> Path:
        return self.tmp / name

    def write_json(self, name: str, obj) -> None:
        """Strict JSON: NaN and ±inf (a quantity a diverged run could not measure) become null."""
        atomic_write_bytes(self.file(name), json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str,
                                                       allow_nan=False).encode())

    def write_csv(self, name: str, columns: dict[str, np.ndarray]) -> None:
        """Columns of equal length as a CSV with a header row."""
        buf = io.StringIO()
        w = csv.writer(buf)
        names = list(columns)
        w.writerow(names)
        for row in zip(*(np.asarray(columns[k]).tolist() for k in names), strict=True):
            w.writerow(row)
        atomic_write_bytes(self.file(name), buf.getvalue().encode())

    def write_npz(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Arrays under :func:`npz_key` names (readable with ``allow_pickle=False``)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **{npz_key(k): np.asarray(v) for k, v in arrays.items()})
        atomic_write_bytes(self.file(name), buf.getvalue())

    def savefig(self, fig, stem: str) -> None:
        """Save a matplotlib figure as ``stem.png`` and ``stem.svg``, byte for byte the same for
        the same figure (the SVG without its date, its element ids from a fixed salt)."""
        import matplotlib

        for ext in ("png", "svg"):
            buf = io.BytesIO()
            with matplotlib.rc_context({"svg.hashsalt": "dropdyn"}):
                fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight",
                            metadata={"Date": None} if ext == "svg" else None)
            atomic_write_bytes(self.file(f"{stem}.{ext}"), buf.getvalue())


def open_run(experiment: str, config: dict, out: Path, *, force: bool = False) -> RunFolder:
    """The run folder ``out`` of one experiment run; on entering it writes ``config.json``
    (experiment, resolved config, versions, seed, start time)."""
    path = Path(out)
    import torch

    meta = {"experiment": experiment, "config": config, "versions": versions(), "seed": config.get("seed"),
            "started": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "threads": torch.get_num_threads()}
    return RunFolder(path, force=force, on_enter=lambda f: f.write_json("config.json", meta))


def default_run_dir(root: Path, group: str, key: str) -> Path:
    """``root/<group>/<UTC time>-<run key>-<4 random hex>``: sortable, named by the run's one
    key (:func:`run_key`), and distinct for two runs of one config started in the same second."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / group / f"{stamp}-{key}-{secrets.token_hex(2)}"


def clean_partials(root: Path, pattern: str = "*/.*.partial-*") -> list[Path]:
    """Remove the hidden ``.NAME.partial-<pid>-…`` folders (``pattern`` under ``root``: by
    default every experiment folder of a store) of processes of this host that are gone (a
    killed run's half-written folder); returns what was removed."""
    removed = []
    for p in Path(root).glob(pattern):
        pid = partial_owner(p)
        if pid is not None and not process_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
