"""Run the four variants of a comparison (dropout, RaM, penalty GD, GD) from one start.

A variant that diverges stops early (``SimulationResult.diverged_at_step``); the others
go on. :meth:`dropdyn.engine.SimulationResult.on_grid` lines all of them up on the planned record grid (NaN after a
divergence), and :func:`mark_divergence` shows in a figure where a curve stopped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..engine import SimulationResult, record_steps, simulate
from ..loop import run_bar

COMPARED = ("dropout", "ram", "penalty", "gd")
COLORS = {"dropout": "C3", "ram": "C0", "penalty": "C2", "gd": "k"}
LABELS = {"dropout": "dropout", "ram": "RaM (same masks)", "penalty": "penalty GD", "gd": "GD"}
STYLES = {"dropout": "-", "ram": "-", "penalty": "--", "gd": "-"}
MARKERS = {"dropout": None, "ram": "o", "penalty": None, "gd": "^"}  # RaM and GD often overlap: tell them apart


def record_every(steps: int, records: int) -> int:
    return max(1, steps // records)


def grid(steps: int, records: int) -> np.ndarray:
    """The steps every variant records at unless it diverges."""
    return record_steps(steps, record_every(steps, records))


def run_variants(X0: torch.Tensor, split, *, lr: float, keep: float, steps: int, records: int, activation: str,
                 seed: int, device: str, dtype: torch.dtype, engine: dict | None = None, snapshots: bool = False,
                 progress: bool | None = False) -> dict[str, SimulationResult]:
    """Each variant from ``X0`` on ``split`` (``inputs``, ``targets``, ``test_inputs``,
    ``test_targets``); dropout and RaM share one mask stream (``seed``). Outputs are
    recorded on the test inputs; with ``snapshots``, dropout's and RaM's particles too.
    ``engine``: simulate's ``backend`` and ``graph`` (:attr:`dropdyn.experiment.EngineRuntime.engine`).
    ``progress``: True (one bar for the comparison), None (one once it has run 2 s), False, or
    the bar of a larger run."""
    every = record_every(steps, records)
    snap = every if snapshots else None
    shared = hasattr(progress, "update")
    bar = progress if shared else run_bar(len(COMPARED) * steps, "variants", enabled=progress)
    runs = {
        v: simulate(v, X0, split.inputs, split.targets, lr=lr, keep=keep, steps=steps, activation=activation,
                    seed=seed, record_every=every, test_inputs=split.test_inputs, test_targets=split.test_targets,
                    probe_inputs=split.test_inputs, snapshot_every=snap if v in ("dropout", "ram") else None,
                    device=device, dtype=dtype, progress=bar, **(engine or {}))
        for v in COMPARED
    }
    if not shared:
        bar.close()
    return runs


def align_to(grid, times, values) -> np.ndarray:
    """``values`` recorded at ``times`` placed on ``grid`` (float64), NaN at grid points with
    no record — after a divergence, or where a run recorded off the grid (the step before
    it diverged). The one way experiments line up runs that stopped at different times."""
    grid, times = np.asarray(grid, float), np.asarray(times, float)
    values = np.asarray(values, float)
    out = np.full((len(grid), *values.shape[1:]), np.nan)
    idx = np.clip(np.searchsorted(grid, times), 0, max(len(grid) - 1, 0))
    hit = np.isclose(grid[idx], times, rtol=1e-9, atol=1e-12) if len(grid) else np.zeros(len(times), bool)
    out[idx[hit]] = values[hit]
    return out


def finite_or_none(x) -> float | None:
    """A float for ``summary.json``: None where the value is NaN or infinite (a diverged run)."""
    x = float(x)
    return x if math.isfinite(x) else None


def plot_variant(ax, t, y, variant: str, **kw) -> None:
    """``variant``'s curve y(t) in its colour, line style and marker; a curve without a finite
    point (a run diverged from its start) gets no markers, which matplotlib cannot place."""
    marker = MARKERS[variant] if np.isfinite(np.asarray(y, dtype=float)).any() else None
    ax.plot(t, y, color=COLORS[variant], ls=STYLES[variant], label=LABELS[variant], marker=marker,
            markevery=0.1 if marker else None, **kw)


def mark_divergence(ax, t_last: float, y_last: float, color: str, step: int | None) -> None:
    """An ✕ at a curve's last finite point when its run diverged at ``step``."""
    if step is not None and math.isfinite(y_last):
        ax.plot([t_last], [y_last], "x", color=color, ms=9, mew=2, label=f"diverged at step {step}")


def diagnostics_table(res: dict) -> dict | None:
    """The curvature diagnostics of every run in ``res`` as one table: a row per run, diagnosed
    step and replica, from the entries ``"<run>/diagnostic_steps"`` and ``"<run>/<name>"``
    (:data:`dropdyn.diagnostics.NAMES`, each ``(steps, replicas)``); None where there are none."""
    from ..diagnostics import NAMES

    runs = [k.removesuffix("/diagnostic_steps") for k in res if k.endswith("/diagnostic_steps")]
    if not runs:
        return None
    rows: dict = {"run": [], "step": [], "replica": [], **{name: [] for name in NAMES}}
    for run in runs:
        for j, k in enumerate(res[f"{run}/diagnostic_steps"]):
            for r in range(res[f"{run}/sharpness"].shape[1]):
                rows["run"].append(run)
                rows["step"].append(int(k))
                rows["replica"].append(r)
                for name in NAMES:
                    rows[name].append(float(res[f"{run}/{name}"][j, r]))
    return rows
