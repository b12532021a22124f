"""The sharpness-bypass assumption measured along training (docs/theory.md §2): the phase
paper's mechanism needs the interaction term B = ‖(1/n) Σ_i Dφ_i ∇V_i‖² to dominate each
neuron's own curvature C = (1/n) Σ_i ∇V_iᵀ ∇²V_i ∇V_i. On the mean-field teacher–student
task, RaM at several widths and keep rates (and GD, for reference) is recorded every
steps/records steps, and A, B, C (``dropdyn.curvature.bypass_terms``, matrix-free) are
measured on each recorded state.

Writes ``metrics.csv`` (one row per width, run and record: A, B, C, B/|C|), ``arrays.npz``
and ``bypass.png`` (B/|C| over training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..curvature import bypass_terms
from ..data import mean_field_init
from ..engine import record_steps, simulate
from ..lab import Context, Experiment, Runtime, setting, verdict
from ..lab.settings import at_least, each, positive, probability
from ._runtime import widths_setting
from .teacher_student import Task

TERMS = ("A", "B", "C")


@dataclass
class Config(Task, Runtime):
    dim: int = setting(5, "input dimension d")
    n_train: int = setting(50, "training samples")
    n_test: int = setting(10, "held-out samples (unused here)")
    label_noise: float = setting(0.0, "standard deviation of the label noise")
    widths: tuple[int, ...] = widths_setting((100, 400, 1600), "widths n")
    keeps: tuple[float, ...] = setting((0.5, 0.2), "RaM keep rates q", each(probability()))
    lr: float = setting(1.0, "mean step τ", positive())
    steps: int = setting(1000, "steps per run", at_least(1))
    records: int = setting(20, "records (and measurements of A, B, C) over the run", at_least(1))


def runs(cfg: Config) -> list[tuple[str, str, float]]:
    """(name, variant, keep) of each run at a width: GD, then RaM at each keep rate."""
    return [("gd", "gd", 1.0)] + [(f"ram q={q:g}", "ram", q) for q in cfg.keeps]


def compute(cfg: Config, ctx: Context) -> dict:
    task = cfg.task(torch.Generator().manual_seed(cfg.seed))
    every = max(1, cfg.steps // cfg.records)
    steps = record_steps(cfg.steps, every)
    out: dict = {"steps": steps, "widths": np.array(sorted(cfg.widths))}
    bar = ctx.bar(len(cfg.widths) * len(runs(cfg)) * cfg.steps, "sharpness-bypass")
    for n in sorted(cfg.widths):
        X0 = mean_field_init(n, cfg.dim, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + n))
        for name, variant, q in runs(cfg):
            res = simulate(variant, X0, task.inputs, task.targets, lr=cfg.lr, keep=q, steps=cfg.steps,
                           activation=cfg.activation, seed=cfg.seed + 1, record_every=every, snapshot_every=every,
                           device=cfg.device, dtype=getattr(torch, cfg.dtype), progress=bar)
            terms = [bypass_terms(X.to(task.inputs), task.inputs, task.targets, cfg.activation)
                     for X in res.snapshots]
            for t in TERMS:
                out[f"{n}/{name}/{t}"] = np.array([x[t] for x in terms] + [np.nan] * (len(steps) - len(terms)))
            out[f"{n}/{name}/diverged_at_step"] = res.diverged_at_step
    bar.close()
    return out


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    fig, axes = subplots(1, len(res["widths"]), figsize=(4.2 * len(res["widths"]), 3.6), squeeze=False,
                         sharey=True)
    for ax, n in zip(axes[0], res["widths"], strict=True):
        for i, (name, _, _) in enumerate(runs(cfg)):
            ratio = res[f"{n}/{name}/B"] / np.abs(res[f"{n}/{name}/C"])
            ax.plot(res["steps"], ratio, "o-", color="k" if name == "gd" else f"C{i}", label=name, ms=3)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"n = {n}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("B / |C|")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"the bypass assumption B ≫ |C| along training: teacher–student, τ = {cfg.lr:g}", fontsize=10)
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    rows: dict = {"width": [], "run": [], "step": [], **{t: [] for t in TERMS}, "B_over_absC": []}
    ratios = {}
    for n in res["widths"]:
        for name, _, _ in runs(cfg):
            A, B, C = (res[f"{n}/{name}/{t}"] for t in TERMS)
            ratio = B / np.abs(C)
            ratios[f"{n}/{name}"] = ratio
            for j, k in enumerate(res["steps"]):
                for key, val in (("width", int(n)), ("run", name), ("step", int(k)), ("A", A[j]), ("B", B[j]),
                                 ("C", C[j]), ("B_over_absC", ratio[j])):
                    rows[key].append(val)
    folder.write_csv("metrics.csv", rows)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    folder.savefig(figure(res, cfg), "bypass")
    return {"min_B_over_absC": {k: float(np.nanmin(v)) for k, v in ratios.items()},
            "median_B_over_absC": {k: float(np.nanmedian(v)) for k, v in ratios.items()},
            "diverged_at_step": {f"{n}/{name}": res[f"{n}/{name}/diverged_at_step"] for n in res["widths"]
                                 for name, _, _ in runs(cfg)}}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """The assumption, over every RaM run's records: B at least 10 times |C|."""
    ram = {k: v for k, v in s["min_B_over_absC"].items() if "ram" in k}
    worst = min(ram, key=ram.get)
    return [("the bypass assumption B ≫ |C| (RaM)", "B / |C| ≥ 10 at every record",
             f"smallest B / |C| = {ram[worst]:.3g} ({worst}); median over a run "
             f"{min(s['median_B_over_absC'][k] for k in ram):.3g}–{max(s['median_B_over_absC'][k] for k in ram):.3g}",
             verdict(ram[worst] >= 10, "B at least 10 × |C| at every record of every RaM run"))]


EXPERIMENT = Experiment("sharpness-bypass", "the phase paper's bypass assumption B ≫ |C| measured along RaM and GD "
                        "training at several widths and keep rates.", Config, compute, write, theory, order=56,
                        smoke=dict(widths=(20, 40), steps=10, records=2, n_train=10))
run = EXPERIMENT.run
