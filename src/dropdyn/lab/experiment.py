"""One shape for every experiment, and the one runner that runs them.

An experiment module declares itself once, as ``EXPERIMENT = Experiment(...)``:

    name          what the CLI, sweeps and the store call it ("teacher-student")
    description   one line for ``--help`` and the report
    Config        a dataclass of settings; each field made with :func:`setting` carries its
                  help text, so the CLI builds the sub-command from it
    compute       (cfg, ctx) → results: the work
    write         (folder, cfg, results) → summary: CSV, npz and figures into the run folder
    theory        (config, summary) → [(quantity, theory, measured, verdict)]: the report's
                  rows, each verdict from :func:`verdict` (whether the measurement agrees,
                  within what tolerance)
    cost          (config) → relative cost, for scheduling sweep points (optional)
    sweeps        True if it runs sweeps of child points (takes --executor/--workers/--scheduler)
    group         (cfg) → the store folder its runs go to (default: the name)
    order         its place in ``dropdyn --help`` (the main job first, then by paper)
    smoke         settings of a run that takes seconds: the test suite runs every registered
                  experiment with them (tests/test_registry.py)

:func:`Experiment.run` is the runner for the CLI, sweeps and notebooks alike: resolve the
config (every check before any work) → open the run folder → compute → write → add the
wall time to the summary → write ``summary.json`` → index the run (``running``, then
``complete`` or ``failed``) under its one key, :func:`dropdyn.store.run_key`.

The registry finds the experiments by scanning the ``dropdyn.experiments`` package: adding
an experiment is adding one module there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import InputError
from ..loop import OWNED
from ..threads import using


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch's global generator for the block (``torch.nn`` initialises layers from it)
    and give the caller's generator state back afterwards: no experiment moves it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class Context:
    """What a run may need besides its config: the store (for experiments built on sweeps),
    the progress bar, and the executor of child points."""

    store: Path = Path("runs")
    progress: bool | None = False
    executor: str = "serial"
    workers: int = 2
    scheduler: str | None = None

    def bar(self, total: int, desc: str, unit: str = "step"):
        """The run's one progress bar over ``total`` units (a no-op bar without ``progress``);
        pass it as ``progress=`` to the simulators, which advance it, and close it at the end."""
        from ..loop import run_bar

        return run_bar(total, desc, enabled=self.progress, unit=unit)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    Config: type
    compute: Callable[[Any, Context], Any]
    write: Callable[[Any, Any, Any], dict]
    theory: Callable[[dict, dict], list] | None = None
    cost: Callable[[dict], float] | None = None
    sweeps: bool = False
    group: Callable[[Any], str] | None = None
    order: int = 100
    smoke: dict = field(default_factory=dict)

    def resolve(self, settings: dict | None = None, file=None):
        """The resolved config: defaults ← ``file`` (YAML/TOML) ← ``settings``, each field
        checked against its constraint, then by the config's ``resolved()`` where it has one
        (the checks that join several fields; it may fill defaults that depend on others)."""
        from .settings import build_config

        cfg = build_config(self.Config, file, settings or {})
        return cfg.resolved() if hasattr(cfg, "resolved") else cfg

    def execute(self, cfg, out: Path, *, force: bool = False, ctx: Context | None = None) -> Path:
        """Compute ``cfg`` (resolved) and write its run folder at ``out``; no index."""
        from .store import open_run, strict_json

        ctx = ctx or Context()
        config = dataclasses.asdict(cfg)
        with open_run(self.name, config, out, force=force) as folder:
            t0 = time.perf_counter()
            owned = OWNED.set(True)  # its progress is the experiment's own (ctx.bar)
            try:
                results = self.compute(cfg, ctx)
            finally:
                OWNED.reset(owned)
            summary = self.write(folder, cfg, results)
            summary = {"seconds": round(time.perf_counter() - t0, 2), **strict_json(summary)}
            folder.write_json("summary.json", summary)
        return folder.path

    def run(self, cfg=None, out: Path | str | None = None, *, root: Path | str = "runs", force: bool = False,
            progress: bool | None = None, index: bool | None = None, executor: str = "serial", workers: int = 2,
            scheduler: str | None = None, threads: int | None = None, **settings) -> Path:
        """Run the experiment and return its run folder. ``cfg`` is a ``Config`` (or None for
        the defaults), ``settings`` override its fields. The folder is ``out``, or a fresh
        ``root/<group>/<time>-<key>-<rand>``. The run is indexed in the store ``root``
        (``index``, default: when its folder lies in the store). ``progress``: a bar for the
        run (True), none (False), or one once it has run 2 s (None). ``threads``: torch's
        intra-op threads for the run (default: :mod:`dropdyn.threads` chooses; the count is
        in the run's ``config.json``)."""
        from .index import RunIndex, utf8
        from .lifecycle import Entry, conduct
        from .store import RunFolder, default_run_dir, run_key

        if cfg is not None and not isinstance(cfg, self.Config):
            raise InputError(f"{self.name} takes a {self.Config.__name__}, got {type(cfg).__name__}")
        base = dataclasses.asdict(cfg) if cfg is not None else {}
        cfg = self.resolve({**base, **settings})
        config = dataclasses.asdict(cfg)
        root = Path(root)
        group = self.group(cfg) if self.group else self.name
        key = run_key(self.name, config)
        out = Path(out) if out is not None else default_run_dir(root, group, key)
        if not utf8(str(out.resolve())):
            raise InputError(f"the run folder {str(out)!r} is not UTF-8 text: name it with UTF-8 characters")
        RunFolder(out, force=force)  # refuses a file, an existing folder, --force onto a non-run folder
        store = RunIndex(root)
        if index is None:
            index = store.folder(store.run_id(out)) is not None
        entry = Entry(store, store.run_id(out), key) if index else None
        ctx = Context(root, progress, executor, workers, scheduler)
        with using(threads):
            return conduct(self, cfg, out, entry, params=config, force=force, ctx=ctx)[0]


def verdict(agrees: bool | None, how: str) -> str:
    """A theory row's verdict: ``"agrees (how)"``, ``"disagrees (how)"``, or, where the row
    compares nothing measurable or the measurement cannot decide, ``"— (how)"``. ``how`` says
    within what tolerance, or why there is no verdict."""
    return f"{'—' if agrees is None else 'agrees' if agrees else 'disagrees'} ({how})"


def sign_verdict(fit: dict, negative: bool = True) -> str:
    """Whether a fitted rate (``slope``, ``ci95``) is negative (``negative``) or not: decided
    by its 95% interval; with no interval (two points), by the slope alone, saying so."""
    slope, ci = fit.get("slope"), fit.get("ci95") or [None, None]
    if slope is None:
        return verdict(None, "no fit")
    if None in ci or any(c != c for c in ci):  # (NaN: two widths)
        return verdict((slope < 0) == negative, "by the slope alone: two widths give no interval")
    if ci[1] < 0:
        return verdict(negative, "the 95% interval lies below 0")
    if ci[0] > 0:
        return verdict(not negative, "the 95% interval lies above 0")
    return verdict(None if negative else True, "the 95% interval contains 0")


_REGISTRY: dict[str, Experiment] = {}


def registry() -> dict[str, Experiment]:
    """Every experiment of the ``dropdyn.experiments`` package, by name."""
    if not _REGISTRY:
        from .. import experiments

        found = {}
        for info in pkgutil.iter_modules(experiments.__path__):
            if not info.name.startswith("_"):
                exp = getattr(importlib.import_module(f"{experiments.__name__}.{info.name}"), "EXPERIMENT", None)
                if isinstance(exp, Experiment):
                    found[exp.name] = exp
        _REGISTRY.update(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
    return _REGISTRY


def get(name: str) -> Experiment:
    """The experiment called ``name``."""
    reg = registry()
    if name not in reg:
        raise InputError(f"unknown experiment {name!r}; known: {', '.join(reg)}")
    return reg[name]


def run(name: str, cfg=None, out=None, **kw) -> Path:
    """``dropdyn.run("teacher-student", width=500, steps=200)``: run an experiment by name (see
    :meth:`Experiment.run`) and return its run folder."""
    return get(name).run(cfg, out, **kw)
