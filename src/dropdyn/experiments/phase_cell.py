"""One cell of the empirical phase diagram (see ``phase_sweep``): the scaling family
τ_n = c_lr n^(−a), q_n = c_keep n^(−b) at several widths, dropout against every
candidate limit, and the cell's empirical phase. ``phase-sweep`` runs a sweep of these."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import check_steps, check_widths
from ..data import mean_field_init
from ..engine import simulate
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import at_least, interval, nonnegative, positive, probability
from ..limits import coupled_limit
from ..masks import MaskStream
from ..metrics import output_gap
from ..phase import classify, family_phase, scaling
from ._runtime import EngineRuntime, widths_setting
from .teacher_student import Task


@dataclass
class CellSettings(Task, EngineRuntime):
    """The settings of a cell other than its exponents (shared with ``phase_sweep``)."""

    widths: tuple[int, ...] = widths_setting((500, 1000), "widths, at least two")
    c_lr: float = setting(0.5, "constant of τ_n = c_lr·n^−a", positive())
    c_keep: float = setting(0.5, "constant of q_n = c_keep·n^−b", probability())
    time: float = setting(1.0, "time horizon T", positive())
    dim: int = setting(5, "input dimension d")
    n_train: int = setting(30, "training samples")
    n_test: int = setting(100, "held-out samples (the output gap's inputs)")
    label_noise: float = setting(0.0, "standard deviation of the label noise")
    replicas: int = setting(4, "replicas per width", at_least(1))
    shrink: float = setting(0.9, "a limit is seen if its distance shrinks by this factor per width doubling",
                            interval("(0, 1]"))


@dataclass
class Config(CellSettings):
    a: float = setting(0.5, "exponent a of τ = c_lr·n^−a (τ must not grow with n)", nonnegative())
    b: float = setting(0.5, "exponent b of q = c_keep·n^−b (q must not grow with n)", nonnegative())

    def resolved(self) -> Config:
        """Sort the widths; refuse, before any is computed, a width whose run has too many steps."""
        cfg = replace(self, widths=tuple(check_widths("widths", self.widths)))
        for n in cfg.widths:
            check_steps(cfg.time, scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)[0], f" (width {n})")
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


def cost(config: dict) -> float:
    """Relative cost of a cell for sweep scheduling: Σ over widths of n × steps × candidates."""
    cfg = Config(**config)
    total = 0.0
    for n in cfg.widths:
        lr, _ = scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)
        total += n * max(1.0, cfg.time / lr) * (1 + len(candidates(cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)))
    return total


def measure_width(cfg: Config, n: int, task) -> tuple[dict[str, float], dict[str, int | None]]:
    """Output gap at time T between dropout at width n and each candidate limit (NaN where
    either diverged), and the step at which each dynamics diverged (None if it did not)."""
    a, b = cfg.a, cfg.b
    R = cfg.replicas
    lr, q = scaling(n, a, b, cfg.c_lr, cfg.c_keep)
    steps = check_steps(cfg.time, lr, f" (width {n})")
    T = steps * lr
    X0 = mean_field_init(n, cfg.dim, replicas=R, generator=torch.Generator().manual_seed(cfg.seed * 7_919 + n))
    def masks() -> MaskStream:  # the same masks for every run that draws from one, none stored
        return MaskStream(q, (R, n), cfg.seed + 1, cfg.device)

    kw = dict(activation=cfg.activation, record_every=steps, probe_inputs=task.test_inputs, device=cfg.device,
              dtype=getattr(torch, cfg.dtype), **cfg.engine)
    drop = simulate("dropout", X0, task.inputs, task.targets, lr=lr, keep=q, steps=steps, masks=masks(), **kw)
    p = limit_parameters(a, b, cfg.c_lr, cfg.c_keep)
    out, diverged = {}, {"dropout": drop.diverged_at_step}
    for cand in candidates(a, b, cfg.c_lr, cfg.c_keep):
        lim = coupled_limit(cand, X0, task.inputs, task.targets, time=T, lr=lr, masks=masks(), alpha=p["alpha"],
                            beta=p["beta"], tau=p["tau"], keep=p["q"], seed=cfg.seed + 2, **kw)
        diverged[cand] = lim.diverged_at_step
        if drop.diverged_at_step or lim.diverged_at_step:
            out[cand] = float("nan")
        else:
            out[cand] = float(output_gap(drop.outputs[-1], lim.outputs[-1]).mean())
    return out, diverged


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


def measure(cfg: Config, bar=None) -> dict:
    """The cell's distances at every width, its empirical and theoretical phase. ``bar``: a
    progress bar advanced by one after each width."""
    widths = list(cfg.widths)
    task = cfg.task(torch.Generator().manual_seed(cfg.seed))
    measured = {}
    for n in widths:
        measured[n] = measure_width(cfg, n, task)
        if bar is not None:
            bar.update()
    dists = {n: d for n, (d, _) in measured.items()}
    emp, ratio = empirical_phase(dists, cfg.shrink)
    lr, q = scaling(widths[-1], cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)
    theory = family_phase(cfg.a, cfg.b)
    return {"a": cfg.a, "b": cfg.b, "theory": theory, "empirical": emp, "ratio": ratio,
            "decided_at_width": classify(widths[-1], lr, q, embedding="powers").phase == theory,
            "distances": {str(n): d for n, d in dists.items()},
            "diverged_at_step": {str(n): s for n, (_, s) in measured.items()}}


def compute(cfg: Config, ctx: Context) -> dict:
    with ctx.bar(len(cfg.widths), f"cell a={cfg.a:g}, b={cfg.b:g}", unit="width") as bar:
        return measure(cfg, bar)


def write(folder, cfg: Config, cell: dict) -> dict:
    return cell


def agrees(cell: dict) -> bool:
    """Whether a cell's empirical phase is its theory's: its limit, or none for a degenerate family."""
    return cell["empirical"] == ("none" if cell["theory"] == "degenerate" else cell["theory"])


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    ratio = "—" if s["ratio"] is None else f"{s['ratio']:.2f}"
    return [("phase of the family", s["theory"], f"nearest limit: {s['empirical']} (distance ×{ratio} per width "
             "doubling)", verdict(agrees(s), f"the nearest limit, if its distance shrinks by {c['shrink']:g} per "
                                             "width doubling; none for a degenerate family"))]


EXPERIMENT = Experiment("phase-cell", "one cell of the empirical phase diagram: dropout vs every candidate limit "
                        "over widths.", Config, compute, write, theory, cost=cost, order=21,
                        smoke=dict(a=0.5, b=0.5, widths=(40, 80), time=0.3, replicas=2))
run = EXPERIMENT.run
