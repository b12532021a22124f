"""One shape for every experiment, and the one runner that runs them.

An experiment module declares itself once, as ``EXPERIMENT = Experiment(...)``:

    name          what the CLI, sweeps and the store call it ("teacher-student")
    description   one line for ``--help`` and the report
    Config        a dataclass of settings; each field made with :func:`setting` carries its
                  help text, so the CLI builds the sub-command from it
    compute       (cfg, ctx) → results: the work
    write         (folder, cfg, results) → summary: CSV, npz and figures into the run folder
    theory        (config, summary) → [(quantity, theory, measured)]: the report's rows
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
import os
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._checks import InputError, check_choice, check_device_dtype, check_seed


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch's global generator for the block (``torch.nn`` initialises layers from it)
    and give the caller's generator state back afterwards: no experiment moves it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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


def setting(default, help: str):  # noqa: A002 - the word argparse uses
    """A config field with its help text (shown by ``dropdyn run NAME --help`` with the default)."""
    return field(default=default, metadata={"help": help})


@dataclass
class Runtime:
    """Seed, device and dtype: the settings every simulating experiment shares."""

    seed: int = setting(0, "seed of data, initialisation and masks")
    device: str = setting("cpu", "cpu or cuda")
    dtype: str = setting("float64", "float64 or float32")

    def check_runtime(self) -> None:
        check_seed(self.seed)
        check_device_dtype(self.device, self.dtype)


@dataclass
class EngineRuntime(Runtime):
    """:class:`Runtime` and the particle engine's step, for experiments that run
    :func:`dropdyn.simulate` (its ``backend``)."""

    backend: str = setting("torch", "engine step: torch (reference) or fused (Triton kernels; CUDA, d + bias ≤ 128)")
    graph: bool = setting(False, "replay the unrecorded steps as one CUDA graph (CUDA; not phase IV's limit)")

    def check_runtime(self) -> None:
        super().check_runtime()
        if check_choice("backend", self.backend, ("torch", "fused")) == "fused":
            from .fused import check_fused

            check_fused(torch.device(self.device))
        if self.graph:
            from .graph import check_graph

            check_graph(torch.device(self.device))

    @property
    def engine(self) -> dict:
        """The :func:`dropdyn.simulate` arguments these settings fix: ``backend`` and ``graph``."""
        return dict(backend=self.backend, graph=self.graph)


@dataclass
class Context:
    """What a run may need besides its config: the store (for experiments built on sweeps),
    the progress bar, and the executor of child points."""

    store: Path = Path("runs")
    progress: bool = False
    executor: str = "serial"
    workers: int = 2
    scheduler: str | None = None

    def bar(self, total: int, desc: str, unit: str = "step"):
        """The run's one progress bar over ``total`` units (a no-op bar without ``progress``);
        pass it as ``progress=`` to the simulators, which advance it, and close it at the end."""
        from .loop import run_bar

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
        """The resolved config: defaults ← ``file`` (YAML/TOML) ← ``settings``, validated."""
        from .config import build_config

        return build_config(self.Config, file, settings or {}).resolved()

    def execute(self, cfg, out: Path, *, force: bool = False, ctx: Context | None = None) -> Path:
        """Compute ``cfg`` (resolved) and write its run folder at ``out``; no index."""
        from .store import open_run, strict_json

        ctx = ctx or Context()
        config = dataclasses.asdict(cfg)
        with open_run(self.name, config, out, force=force) as folder:
            t0 = time.perf_counter()
            summary = self.write(folder, cfg, self.compute(cfg, ctx))
            summary = {"seconds": round(time.perf_counter() - t0, 2), **strict_json(summary)}
            folder.write_json("summary.json", summary)
        return folder.path

    def run(self, cfg=None, out: Path | str | None = None, *, root: Path | str = "runs", force: bool = False,
            progress: bool = False, index: bool | None = None, executor: str = "serial", workers: int = 2,
            scheduler: str | None = None, **settings) -> Path:
        """Run the experiment and return its run folder. ``cfg`` is a ``Config`` (or None for
        the defaults), ``settings`` override its fields. The folder is ``out``, or a fresh
        ``root/<group>/<time>-<key>-<rand>``. The run is indexed in the store ``root``
        (``index``, default: when its folder lies in the store)."""
        from .runs import RunIndex
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
        RunFolder(out, force=force)  # refuses a file, an existing folder, --force onto a non-run folder
        store = RunIndex(root)
        if index is None:
            index = store.folder(store.run_id(out)) is not None
        if index:
            run_id = store.run_id(out)
            store.start(run_id, key, self.name, config)
        ctx = Context(root, progress, executor, workers, scheduler)
        t0 = time.perf_counter()
        try:
            path = self.execute(cfg, out, force=force, ctx=ctx)
        except BaseException as e:
            if index:
                store.fail(run_id, key, self.name, config, f"{type(e).__name__}: {e}".strip())
            raise
        if index:
            from .store import read_json

            store.finish(run_id, key, self.name, config, read_json(path / "summary.json"),
                         seconds=time.perf_counter() - t0)
        return path


_REGISTRY: dict[str, Experiment] = {}


def registry() -> dict[str, Experiment]:
    """Every experiment of the ``dropdyn.experiments`` package, by name."""
    if not _REGISTRY:
        from . import experiments

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
