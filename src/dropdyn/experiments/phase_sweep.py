"""The empirical phase diagram: which limit does finite-width dropout approach?

Each cell (a, b) of a grid is the scaling family τ_n = c_lr n^(−a), q_n = c_keep n^(−b).
The candidate limits of a cell are the limit processes of docs/theory.md §2 at the
family's *limiting* parameters

    ᾱ = lim τ_n/q_n,  β̄ = lim 1/(n q_n),  τ̄ = lim τ_n,  q̄ = lim q_n

    I    always                      gradient flow of R
    II   0 < β̄ < ∞                   gradient flow of R + β̄P
    III  0 < ᾱ < ∞                   Poisson clocks of rate 1/ᾱ
    IV   0 < ᾱ, β̄ < ∞                critical kernel
    V    τ̄ > 0 and q̄ > 0             Bernoulli clocks (τ̄, q̄)

(a candidate whose parameter is 0 reduces to another one, and ∞ has no limit). At
each width n, dropout and every candidate start from the same particles and share
clocks where the candidate has them (the dropout masks; independent clocks when the
thinning step would be too coarse). The distance is the output gap
‖f(μ^n_T) − f(μ̄_T)‖ on held-out inputs, averaged over replicas.

The *empirical phase* of a cell is its nearest candidate at the largest width, if that
distance shrinks by at least ``shrink`` when the width doubles; otherwise "none" (no
limit seen, as in the degenerate region). It is compared with the theory
(``family_phase``) over all cells, and over the cells the finite width can decide
(``classify`` at the largest width agrees with the family's phase).

Each cell is a ``phase-cell`` run and the grid is a sweep of them (``dropdyn.sweep``):
cells already in the store are reused, an interrupted sweep resumes, and
``--executor processes|dask`` spreads the cells over workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import each, nonnegative
from ..lab.store import config_key
from ..lab.sweep import make_sweep, run_children
from . import phase_cell
from .phase_cell import agrees, candidates, empirical_phase, limit_parameters  # noqa: F401 - the cell's rules, re-exported


@dataclass
class Config(phase_cell.CellSettings):
    a_values: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75, 1.0, 1.25), "exponents a (τ = c_lr·n^−a)",
                                          each(nonnegative()))
    b_values: tuple[float, ...] = setting((0.0, 0.25, 0.5, 0.75, 1.0), "exponents b (q = c_keep·n^−b)",
                                          each(nonnegative()))
    full: bool = setting(False, "finer grid, widths up to 8000, 8 replicas: for bigger machines")

    def resolved(self) -> Config:
        """The preset of ``full``, its widths sorted; every cell's run checked before any is computed."""
        cfg = self
        if self.full:  # the preset for bigger machines
            cfg = replace(self, a_values=(0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.5),
                          b_values=(0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0),
                          widths=(1000, 2000, 4000, 8000), replicas=8, time=1.0, full=False)
        cells = [phase_cell.Config(**cfg.cell_settings(), **cell).resolved() for cell in cfg.cells()]
        return replace(cfg, widths=cells[0].widths)

    def cell_settings(self) -> dict:
        """The settings shared by every cell (all but the grid)."""
        return {f.name: getattr(self, f.name) for f in fields(phase_cell.CellSettings)}

    def cells(self) -> list[dict]:
        return [{"a": a, "b": b} for a in self.a_values for b in self.b_values]


def figure(cells: list[dict], cfg: Config):
    from matplotlib.patches import Rectangle

    from .._plot import subplots
    from ..phase import draw_diagram

    colors = {"I": "C0", "II": "C2", "III": "C1", "IV": "C3", "V": "C4", "none": "0.75"}
    fig, (ax1, ax2) = subplots(1, 2, figsize=(13, 5))
    draw_diagram(ax1)
    for c in cells:
        ax1.plot(c["a"], c["b"], ".", color="k", ms=3)
    ax2.set_title(f"empirical: nearest limit at n={max(cfg.widths)}, "
                  "label = distance ratio per width doubling", fontsize=9)
    da = np.diff(sorted({c["a"] for c in cells})).min(initial=0.25) if len(cells) > 1 else 0.25
    db = np.diff(sorted({c["b"] for c in cells})).min(initial=0.25) if len(cells) > 1 else 0.25
    for c in cells:
        ok = c["empirical"] == ("none" if c["theory"] == "degenerate" else c["theory"])
        ax2.add_patch(Rectangle((c["a"] - da / 2, c["b"] - db / 2), da, db, color=colors[c["empirical"]],
                                alpha=0.75, ec="k" if ok else "red", lw=0.5 if ok else 2))
        ratio = "—" if c["ratio"] is None else f"{c['ratio']:.2f}"
        ax2.text(c["a"], c["b"], f"{c['empirical']}\n{ratio}", ha="center", va="center", fontsize=7)
    for name, col in colors.items():
        ax2.plot([], [], "s", color=col, label=name if name != "none" else "no limit (no shrink)")
    ax2.plot([], [], "s", mfc="none", mec="red", label="disagrees with theory")
    ax2.set_xlim(min(c["a"] for c in cells) - da, max(c["a"] for c in cells) + da)
    ax2.set_ylim(min(c["b"] for c in cells) - db, max(c["b"] for c in cells) + db)
    ax2.set_xlabel("a  (τ = c·n^−a)")
    ax2.set_ylabel("b  (q = c·n^−b)")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def compute(cfg: Config, ctx: Context) -> dict:
    """Run (or resume) the sweep of cells in the store."""
    sweep = make_sweep({"experiment": "phase-cell", "name": f"phase-sweep-{config_key(asdict(cfg))}",
                        "base": cfg.cell_settings(), "list": cfg.cells()})
    cells, computed = run_children(sweep, ctx, "cells")
    return {"cells": cells, "sweep": sweep.name, "computed": computed}


def write(folder, cfg: Config, res: dict) -> dict:
    cells = res["cells"]
    rows = [(c["a"], c["b"], c["theory"], int(n), cand, v)
            for c in cells for n, d in c["distances"].items() for cand, v in d.items()]
    cols = list(zip(*rows, strict=True))
    folder.write_csv("distances.csv", {"a": np.array(cols[0]), "b": np.array(cols[1]), "theory": np.array(cols[2]),
                                       "width": np.array(cols[3]), "candidate": np.array(cols[4]),
                                       "output_gap": np.array(cols[5], dtype=float)})
    folder.write_npz("arrays.npz", {
        "a": np.array([c["a"] for c in cells]), "b": np.array([c["b"] for c in cells]),
        "ratio": np.array([np.nan if c["ratio"] is None else c["ratio"] for c in cells]),
        "theory": np.array([c["theory"] for c in cells]), "empirical": np.array([c["empirical"] for c in cells]),
    })
    folder.savefig(figure(cells, cfg), "phase_diagram")
    decided = [c for c in cells if c["decided_at_width"]]
    return {
        "agreement_all": sum(map(agrees, cells)) / len(cells), "cells": len(cells),
        "agreement_decided": (sum(map(agrees, decided)) / len(decided)) if decided else None,
        "decided_cells": len(decided), "sweep": res["sweep"], "cells_computed": res["computed"],
        "cells_detail": cells, "largest_width": cfg.widths[-1],
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    every = "every cell's nearest limit is its phase"
    rows = [("cells agreeing with the theory", "all", f"{s['agreement_all']:.0%} of {s['cells']}",
             verdict(s["agreement_all"] == 1, every))]
    if s.get("agreement_decided") is not None:
        rows.append(("… among cells the width decides", "all", f"{s['agreement_decided']:.0%} of {s['decided_cells']}",
                     verdict(s["agreement_decided"] == 1, every)))
    return rows + [(f"cell a={d['a']:g}, b={d['b']:g}", d["theory"], d["empirical"],
                    verdict(agrees(d), "the nearest limit; no limit for a degenerate family"))
                   for d in s["cells_detail"]]


EXPERIMENT = Experiment("phase-sweep", "the empirical phase diagram: nearest limit per (a, b) cell, beside the theory.",
                        Config, compute, write, theory, sweeps=True, order=20,
                        smoke=dict(a_values=(0.0, 1.0), b_values=(0.0,), widths=(40, 80), time=0.3, replicas=2))
run = EXPERIMENT.run
