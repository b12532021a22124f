"""The empirical phase diagram: which limit does finite-width dropout approach?

Each cell (a, b) of a grid is the scaling family τ_n = c_lr n^(−a), q_n = c_keep n^(−b).
The candidate limits of a cell are the limit processes of THEORY.md §2 at the
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
"""

from __future__ import annotations

import time as _time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int, check_positive, parse_floats
from ..data import mean_field_init, teacher_student
from ..engine import simulate
from ..limits import MAX_THINNING, simulate_limit
from ..masks import draw_masks
from ..metrics import output_gap
from ..phase import classify, family_phase, scaling
from ..store import open_run
from .convergence import parse_widths

CANDIDATES = ("I", "II", "III", "IV", "V")


@dataclass
class Config:
    a_values: str = "0,0.25,0.5,0.75,1,1.25"
    b_values: str = "0,0.25,0.5,0.75,1"
    widths: str = "500,1000"
    c_lr: float = 0.5
    c_keep: float = 0.5
    time: float = 1.0
    dim: int = 5
    teacher_width: int = 5
    n_train: int = 30
    n_test: int = 100
    activation: str = "tanh"
    replicas: int = 4
    shrink: float = 0.9
    seed: int = 0
    full: bool = False

    def resolved(self) -> Config:
        cfg = self
        if self.full:  # the preset for bigger machines
            cfg = Config(**{**asdict(self), "a_values": "0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25,1.5",
                            "b_values": "0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1",
                            "widths": "1000,2000,4000,8000", "replicas": 8, "time": 1.0, "full": False})
        a, b = parse_floats("a_values", cfg.a_values), parse_floats("b_values", cfg.b_values)
        if min(b) < 0 or min(a) < 0:
            raise ValueError("a and b must be >= 0 (τ, q must not grow with n)")
        parse_widths(cfg.widths)
        check_positive("time", cfg.time)
        check_positive("c_lr", cfg.c_lr)
        check_positive("c_keep", cfg.c_keep)
        if cfg.c_keep > 1:
            raise ValueError(f"c_keep must be <= 1 so that q_n <= 1, got {cfg.c_keep!r}")
        check_int("replicas", cfg.replicas, 1)
        if not 0 < cfg.shrink <= 1:
            raise ValueError(f"shrink must be in (0, 1], got {cfg.shrink!r}")
        return cfg


def limit_parameters(a: float, b: float, c_lr: float, c_keep: float) -> dict:
    """ᾱ, β̄, τ̄, q̄ of the family (0 or inf where they vanish or blow up)."""
    eps = 1e-9
    alpha = c_lr / c_keep if abs(a - b) < eps else (0.0 if a > b else float("inf"))
    beta = 1 / c_keep if abs(b - 1) < eps else (0.0 if b < 1 else float("inf"))
    return {"alpha": alpha, "beta": beta, "tau": c_lr if abs(a) < eps else 0.0, "q": c_keep if abs(b) < eps else 0.0}


def candidates(a: float, b: float, c_lr: float, c_keep: float) -> list[str]:
    """The candidate limits of a cell (see the module table)."""
    p = limit_parameters(a, b, c_lr, c_keep)
    finite = lambda v: 0 < v < float("inf")  # noqa: E731
    out = ["I"]
    out += ["II"] if finite(p["beta"]) else []
    out += ["III"] if finite(p["alpha"]) else []
    out += ["IV"] if finite(p["alpha"]) and finite(p["beta"]) else []
    out += ["V"] if p["tau"] > 0 and p["q"] > 0 else []
    return out


def measure_cell(cfg: Config, a: float, b: float, n: int, task) -> dict[str, float]:
    """Output gap at time T between dropout at width n and each candidate limit."""
    R = cfg.replicas
    lr, q = scaling(n, a, b, cfg.c_lr, cfg.c_keep)
    steps = max(1, round(cfg.time / lr))
    T = steps * lr
    X0 = mean_field_init(n, cfg.dim, replicas=R, generator=torch.Generator().manual_seed(cfg.seed * 7_919 + n))
    masks = draw_masks(q, steps, (R, n), seed=cfg.seed + 1)
    kw = dict(activation=cfg.activation, record_every=steps, probe_inputs=task.test_inputs)
    drop = simulate("dropout", X0, task.inputs, task.targets, lr=lr, keep=q, steps=steps, masks=masks, **kw)
    p = limit_parameters(a, b, cfg.c_lr, cfg.c_keep)
    out = {}
    for cand in candidates(a, b, cfg.c_lr, cfg.c_keep):
        args = dict(time=T, seed=cfg.seed + 2, **kw)
        if cand in ("I", "II"):
            args.update(h=lr, beta=p["beta"] if cand == "II" else None)
        elif cand in ("III", "IV"):
            coupled = lr / p["alpha"] <= MAX_THINNING
            h = lr if coupled else T / np.ceil(T / (p["alpha"] * MAX_THINNING))
            args.update(time=T, h=h, alpha=p["alpha"], beta=p["beta"] if cand == "IV" else None,
                        clocks=masks if coupled else None, record_every=max(1, round(T / h)))
        else:
            args.update(lr=p["tau"], keep=p["q"], clocks=masks)
        lim = simulate_limit(cand, X0, task.inputs, task.targets, **args)
        if drop.diverged_at_step or lim.diverged_at_step:
            out[cand] = float("nan")
        else:
            out[cand] = float(output_gap(drop.outputs[-1], lim.outputs[-1]).mean())
    return out


def empirical_phase(dist_by_width: dict[int, dict[str, float]], shrink: float) -> tuple[str, float]:
    """Nearest candidate at the largest width if its distance shrank by ``shrink`` per
    doubling of the width (geometric mean over the widths), else "none"."""
    widths = sorted(dist_by_width)
    last = dist_by_width[widths[-1]]
    finite = {k: v for k, v in last.items() if np.isfinite(v)}
    if not finite:
        return "none", float("nan")
    best = min(finite, key=finite.get)
    d0, d1 = dist_by_width[widths[0]][best], finite[best]
    doublings = np.log2(widths[-1] / widths[0])
    ratio = float((d1 / d0) ** (1 / doublings)) if d0 > 0 else float("nan")
    return (best if ratio <= shrink else "none"), ratio


def figure(cells: list[dict], cfg: Config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..phase import draw_diagram

    colors = {"I": "C0", "II": "C2", "III": "C1", "IV": "C3", "V": "C4", "none": "0.75"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    draw_diagram(ax1)
    for c in cells:
        ax1.plot(c["a"], c["b"], ".", color="k", ms=3)
    ax2.set_title(f"empirical: nearest limit at n={max(parse_widths(cfg.widths))}, "
                  "label = distance ratio per width doubling", fontsize=9)
    da = np.diff(sorted({c["a"] for c in cells})).min(initial=0.25) if len(cells) > 1 else 0.25
    db = np.diff(sorted({c["b"] for c in cells})).min(initial=0.25) if len(cells) > 1 else 0.25
    for c in cells:
        ok = c["empirical"] == ("none" if c["theory"] == "degenerate" else c["theory"])
        ax2.add_patch(plt.Rectangle((c["a"] - da / 2, c["b"] - db / 2), da, db, color=colors[c["empirical"]],
                                    alpha=0.75, ec="k" if ok else "red", lw=0.5 if ok else 2))
        ax2.text(c["a"], c["b"], f"{c['empirical']}\n{c['ratio']:.2f}", ha="center", va="center", fontsize=7)
    for name, col in colors.items():
        ax2.plot([], [], "s", color=col, label=name if name != "none" else "no limit (no shrink)")
    ax2.plot([], [], "s", mfc="none", mec="red", label="disagrees with theory")
    ax2.set_xlim(min(c["a"] for c in cells) - da, max(c["a"] for c in cells) + da)
    ax2.set_ylim(min(c["b"] for c in cells) - db, max(c["b"] for c in cells) + db)
    ax2.set_xlabel("a  (τ = c·n^−a)")
    ax2.set_ylabel("b  (q = c·n^−b)")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def run(cfg: Config, out: Path | None = None, *, root: Path = Path("runs"), force: bool = False,
        progress: bool = False) -> Path:
    cfg = cfg.resolved()
    widths = parse_widths(cfg.widths)
    resolved = asdict(cfg)
    with open_run("phase-sweep", resolved, out, root=root, force=force) as folder:
        t0 = _time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed)
        task = teacher_student(dim=cfg.dim, teacher_width=cfg.teacher_width, n_train=cfg.n_train,
                               n_test=cfg.n_test, activation=cfg.activation, generator=g)
        cells, rows = [], []
        for a in parse_floats("a_values", cfg.a_values):
            for b in parse_floats("b_values", cfg.b_values):
                theory = family_phase(a, b)
                dists = {n: measure_cell(cfg, a, b, n, task) for n in widths}
                emp, ratio = empirical_phase(dists, cfg.shrink)
                lr, q = scaling(widths[-1], a, b, cfg.c_lr, cfg.c_keep)
                decided = classify(widths[-1], lr, q).phase == theory
                cells.append({"a": a, "b": b, "theory": theory, "empirical": emp, "ratio": ratio,
                              "decided_at_width": decided, "distances": {str(n): d for n, d in dists.items()}})
                for n, d in dists.items():
                    for cand, v in d.items():
                        rows.append((a, b, theory, n, cand, v))
                if progress:
                    print(f"  a={a:g} b={b:g}: theory {theory}, empirical {emp} (ratio {ratio:.2f})", flush=True)

        def agree(c):
            return c["empirical"] == ("none" if c["theory"] == "degenerate" else c["theory"])

        decided = [c for c in cells if c["decided_at_width"]]
        summary = {
            "agreement_all": sum(map(agree, cells)) / len(cells), "cells": len(cells),
            "agreement_decided": (sum(map(agree, decided)) / len(decided)) if decided else None,
            "decided_cells": len(decided), "seconds": round(_time.perf_counter() - t0, 1), "cells_detail": cells,
        }
        cols = list(zip(*rows, strict=True))
        folder.write_csv("distances.csv", {"a": np.array(cols[0]), "b": np.array(cols[1]), "theory": np.array(cols[2]),
                                           "width": np.array(cols[3]), "candidate": np.array(cols[4]),
                                           "output_gap": np.array(cols[5])})
        folder.write_npz("arrays.npz", {
            "a": np.array([c["a"] for c in cells]), "b": np.array([c["b"] for c in cells]),
            "ratio": np.array([c["ratio"] for c in cells]),
            "theory": np.array([c["theory"] for c in cells]), "empirical": np.array([c["empirical"] for c in cells]),
        })
        folder.write_json("summary.json", summary)
        folder.savefig(figure(cells, cfg), "phase_diagram")
    return folder.path
