"""One cell of the deep empirical phase diagram (docs/theory.md §6, docs/phase-diagram.md
"Deeper networks"): a deep mean-field network with ``layers`` hidden layers on the
teacher–student task, at several widths, the scaling family τ_n = c_lr·n^(−a),
q_n = c_keep·n^(−b) run to time T = steps·τ_n. From the same start and on one mask stream
per layer, dropout against RaM, the expected step (GD on the mask-averaged loss) and GD
(``dropdyn.deep``): the coupled gaps at time T, in output (RMS over held-out inputs) and in
parameters (the mean squared difference of every tensor's entries, each tensor weighted
equally), averaged over replicas, with their rates in n fitted with 95% intervals; and
dropout's output RMS at T, the scale the output gaps are small against (at the iid
initialisation from L = 3 on it falls with n: the limit never moves).

The cell *behaves like* the two-layer phase whose limit dropout approaches: the nearest of
the three at the largest width, if its output gap relative to dropout's output RMS shrinks
by at least ``shrink`` per width doubling and is below ½ there (:data:`WITHIN`; relative
so that a gap that shrinks only because the whole output does — the iid network from
L = 3 on — or that is as large as a blown-up output says nothing of an approach), named
by the limit that variant itself has in this family (its two-layer parameters
ᾱ = lim τ/q, β̄ = lim 1/(nq), τ̄: RaM's is V if τ̄ > 0, III if 0 < ᾱ < ∞, I if ᾱ = 0; the
expected step's, the penalty's, II if 0 < β̄ < ∞, I if β̄ = 0; GD's I; none where the
parameter is infinite); otherwise "none" (no limit seen, as in the degenerate region; the
critical IV's limit is none of the three).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import deep
from .._checks import check_steps, check_widths
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import at_least, interval, nonnegative, one_of, positive, probability, valid_seed
from ..phase import family_phase, scaling
from ._runtime import widths_setting
from .convergence import fit_rate
from .phase_cell import limit_parameters
from .teacher_student import Task

OTHERS = ("ram", "expected", "gd")
WITHIN = 0.5  # a limit is seen only where its gap is below this fraction of dropout's output RMS


@dataclass
class CellSettings(Task):
    """The settings of a deep cell other than its exponents and depth (shared with ``deep-phase``)."""

    widths: tuple[int, ...] = widths_setting((100, 200, 400), "widths, at least two")
    c_lr: float = setting(0.5, "constant of τ_n = c_lr·n^−a", positive())
    c_keep: float = setting(0.5, "constant of q_n = c_keep·n^−b", probability())
    time: float = setting(0.5, "time horizon T", positive())
    dim: int = setting(5, "input dimension d")
    n_train: int = setting(30, "training samples")
    n_test: int = setting(100, "held-out samples (the output gap's inputs)")
    label_noise: float = setting(0.0, "standard deviation of the label noise")
    replicas: int = setting(2, "replicas per width", at_least(1))
    expected_samples: int = setting(4, "masks per step of the Monte-Carlo expected step", at_least(1))
    init: str = setting("correlated", "initialisation of the hidden W_{l+1} (deep.init: the iid one is "
                        "degenerate from L = 3 on)", one_of(*deep.INITS))
    max_norm: float = setting(0.0, "max-norm c: each hidden unit's incoming weights within c times their layer's "
                              "initial row RMS (deep.max_norm_radii; 0: none)", nonnegative())
    max_work: float = setting(0.0, "leave out the widths whose work, steps·L·n², passes this (never the two "
                              "smallest; 0: none)", nonnegative())
    shrink: float = setting(0.9, "a limit is seen if its gap relative to the output shrinks by this factor per "
                            "width doubling", interval("(0, 1]"))
    seed: int = setting(0, "seed of data, initialisation and masks", valid_seed())


@dataclass
class Config(CellSettings):
    layers: int = setting(2, "hidden layers L", at_least(1))
    a: float = setting(0.5, "exponent a of τ = c_lr·n^−a", nonnegative())
    b: float = setting(0.5, "exponent b of q = c_keep·n^−b", nonnegative())

    def resolved(self) -> Config:
        cfg = replace(self, widths=tuple(check_widths("widths", self.widths)))
        for n in cfg.widths:
            check_steps(cfg.time, scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)[0], f" (width {n})")
        return cfg


def gaps(a: deep.DeepResult, b: deep.DeepResult) -> tuple[float, float]:
    """Output gap (RMS over the probe inputs, mean over replicas) and parameter gap (mean over
    tensors of the mean squared entry difference, mean over replicas) at the last record."""
    out = float(np.sqrt(((a.outputs[-1] - b.outputs[-1]) ** 2).mean(-1)).mean())
    par = float(np.mean([((x - y) ** 2).flatten(1).mean(1).mean().item() for x, y in
                         zip(a.net.tensors, b.net.tensors, strict=True)]))
    return out, par


def steps_at(cfg: Config, n: int) -> int:
    return max(1, round(cfg.time / scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)[0]))


def cell_widths(cfg: Config) -> tuple[int, ...]:
    """The widths the cell measures: ``widths`` less those whose work steps·L·n² passes
    ``max_work`` (the two smallest always stay, so every cell has a rate)."""
    ws = sorted(cfg.widths)
    return tuple(ws[:2] + [n for n in ws[2:] if not cfg.max_work or steps_at(cfg, n) * cfg.layers * n * n
                           <= cfg.max_work])


def measure_width(cfg: Config, n: int, task) -> dict:
    lr, keep = scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)
    steps = steps_at(cfg, n)
    net = deep.init(cfg.layers, n, cfg.dim, replicas=cfg.replicas, kind=cfg.init,
                    generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + n))
    kw = dict(lr=lr, keep=keep, steps=steps, seed=cfg.seed + 1, activation=cfg.activation, probe=task.test_inputs,
              expected_samples=cfg.expected_samples, max_norm=cfg.max_norm or None)
    drop = deep.simulate("dropout", net, task.inputs, task.targets, **kw)
    out = {"lr": lr, "keep": keep, "steps": steps, "diverged_at_step": {"dropout": drop.diverged_at_step},
           "output_rms": float(np.sqrt((drop.outputs[-1] ** 2).mean(-1)).mean())}
    for other in OTHERS:
        res = deep.simulate(other, net, task.inputs, task.targets, **kw)
        out["diverged_at_step"][other] = res.diverged_at_step
        fine = drop.diverged_at_step is None and res.diverged_at_step is None
        out[other] = gaps(drop, res) if fine else (float("nan"), float("nan"))
    return out


def limit_of(variant: str, a: float, b: float, c_lr: float, c_keep: float) -> str:
    """The two-layer phase of ``variant``'s own limit in the family (a, b) (module doc)."""
    p = limit_parameters(a, b, c_lr, c_keep)
    if variant == "gd":
        return "I"
    value = p["alpha"] if variant == "ram" else p["beta"]
    if value == 0:
        return "I"
    if not np.isfinite(value):
        return "none"
    return ("V" if p["tau"] > 0 else "III") if variant == "ram" else "II"


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def nearest(cell: dict, kind: str = "output") -> tuple[str | None, float | None]:
    """The variant nearest dropout at the cell's largest width in ``kind`` ("output" or
    "parameters") and its gap's ratio per width doubling (None where every run diverged)."""
    widths = sorted(cell["gaps"], key=int)
    last = {k: cell["gaps"][widths[-1]][k][kind] for k in OTHERS}
    last = {k: v for k, v in last.items() if _finite(v)}
    if not last:
        return None, None
    best = min(last, key=last.get)
    d0 = cell["gaps"][widths[0]][best][kind]
    doublings = np.log2(int(widths[-1]) / int(widths[0]))
    return best, float((last[best] / d0) ** (1 / doublings)) if _finite(d0) and d0 > 0 else float("nan")


def behaves_like(cell: dict, cfg: CellSettings) -> tuple[str, float | None]:
    """The two-layer phase the cell (:func:`measure`'s result, or its JSON) behaves like
    (module doc), and the ratio per width doubling of the nearest output gap relative to
    dropout's output RMS."""
    best, _ = nearest(cell)
    if best is None:
        return "none", None
    lo, hi = min(cell["gaps"], key=int), max(cell["gaps"], key=int)
    rel = {}
    for n in (lo, hi):
        gap, rms = cell["gaps"][n][best]["output"], cell["output_rms"][n]
        rel[n] = gap / rms if _finite(gap) and _finite(rms) and rms > 0 else float("nan")
    ratio = float((rel[hi] / rel[lo]) ** (1 / np.log2(int(hi) / int(lo)))) if rel[lo] > 0 else float("nan")
    if not (ratio <= cfg.shrink and rel[hi] < WITHIN):
        return "none", ratio
    return limit_of(best, cell["a"], cell["b"], cfg.c_lr, cfg.c_keep), ratio


def measure(cfg: Config, bar=None) -> dict:
    task = cfg.task(torch.Generator().manual_seed(cfg.seed))
    widths = cell_widths(cfg)
    measured = {}
    for n in widths:
        measured[n] = measure_width(cfg, n, task)
        if bar is not None:
            bar.update()
    rates = {f"{other}/{kind}": fit_rate(widths, [measured[n][other][i] for n in widths])
             for other in OTHERS for i, kind in enumerate(("output", "parameters"))}
    cell = {"layers": cfg.layers, "a": cfg.a, "b": cfg.b, "two_layer_theory": family_phase(cfg.a, cfg.b),
            "rates": rates,
            "gaps": {str(n): {other: {"output": m[other][0], "parameters": m[other][1]} for other in OTHERS}
                     for n, m in measured.items()},
            "steps": {str(n): m["steps"] for n, m in measured.items()},
            "output_rms": {str(n): m["output_rms"] for n, m in measured.items()},
            "diverged_at_step": {str(n): m["diverged_at_step"] for n, m in measured.items()}}
    like, ratio = behaves_like(cell, cfg)
    return {**cell, "behaves_like": like, "ratio": ratio}


def compute(cfg: Config, ctx: Context) -> dict:
    with ctx.bar(len(cell_widths(cfg)), f"deep cell L={cfg.layers}, a={cfg.a:g}, b={cfg.b:g}", unit="width") as bar:
        return measure(cfg, bar)


def write(folder, cfg: Config, cell: dict) -> dict:
    return cell


def cost(config: dict) -> float:
    """Relative cost for sweep scheduling: Σ over the cell's widths of L·n² × steps."""
    cfg = Config(**config)
    return sum(cfg.layers * n * n * steps_at(cfg, n) for n in cell_widths(cfg))


def agrees(cell: dict) -> bool:
    """Whether the cell behaves like its two-layer family's phase (none for a degenerate family)."""
    want = cell["two_layer_theory"]
    return cell["behaves_like"] == ("none" if want in ("degenerate", "IV") else want)


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    ratio = "—" if s["ratio"] is None else f"{s['ratio']:.2f}"
    return [(f"L = {s['layers']}: the two-layer phase the cell behaves like", s["two_layer_theory"],
             f"{s['behaves_like']} (nearest gap relative to the output ×{ratio} per width doubling)",
             verdict(agrees(s), "the two-layer family's phase; none for IV and the degenerate region"))]


EXPERIMENT = Experiment("deep-cell", "one cell of the deep empirical phase diagram: dropout on an L-hidden-layer "
                        "mean-field network against RaM, the expected step and GD over widths.", Config, compute,
                        write, theory, cost=cost, order=23,
                        smoke=dict(a=0.5, b=0.5, widths=(8, 16), time=0.2, replicas=1, layers=2))
run = EXPERIMENT.run
