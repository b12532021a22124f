"""Teacher–student task, Figure 2 of the phase paper (docs/theory.md §1–2).

A wide mean-field student (default width 5000) learns a 5-neuron teacher with
dropout, RaM, penalty GD and GD from the same initial particles; dropout and RaM are
*coupled* (one mask stream). The prediction of the theory at a practical learning
rate (α = τ/q fixed, β = 1/(nq) → 0): dropout ≈ RaM (their coupled gap is small and
shrinks with the width), while penalty GD ≈ GD (the penalty (1−q)/(nq) vanishes).

Writes ``config.json`` (resolved config, versions, seed), ``metrics.csv``,
``arrays.npz``, ``summary.json`` and figures ``risk.{png,svg}``, ``gap.{png,svg}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import mean_field_init, teacher_student
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import Settings, at_least, nonnegative, positive, probability
from ..metrics import output_gap, particle_distance
from ..phase import phase_line
from ._runtime import EngineRuntime, activation_setting
from ._variants import COLORS, COMPARED, finite_or_none, grid, mark_divergence, plot_variant, run_variants


@dataclass
class Task(Settings):
    """The teacher–student task (shared by the experiments that use it; they set their own defaults)."""

    dim: int = setting(10, "input dimension d", at_least(1))
    teacher_width: int = setting(5, "neurons of the teacher", at_least(1))
    n_train: int = setting(100, "training samples", at_least(1))
    n_test: int = setting(1000, "held-out samples", at_least(1))
    label_noise: float = setting(0.2, "standard deviation of the label noise", nonnegative())
    activation: str = activation_setting()

    def task(self, generator: torch.Generator):
        return teacher_student(dim=self.dim, teacher_width=self.teacher_width, n_train=self.n_train,
                               n_test=self.n_test, label_noise=self.label_noise, activation=self.activation,
                               generator=generator)


@dataclass
class Config(Task, EngineRuntime):
    width: int = setting(5000, "student width n", at_least(1))
    lr: float = setting(1.0, "learning rate τ", positive())
    keep: float = setting(0.5, "keep probability q", probability())
    steps: int = setting(1000, "number of steps", at_least(1))
    records: int = setting(100, "records of the risks and gaps over the run", at_least(1))


def compute(cfg: Config, ctx: Context) -> dict:
    """Run the four variants; return the curves and gaps (NumPy arrays)."""
    dtype = getattr(torch, cfg.dtype)
    g = torch.Generator().manual_seed(cfg.seed)
    task = cfg.task(g)
    X0 = mean_field_init(cfg.width, cfg.dim, generator=g)
    runs = run_variants(X0, task, lr=cfg.lr, keep=cfg.keep, steps=cfg.steps, records=cfg.records,
                        activation=cfg.activation, seed=cfg.seed + 1, device=cfg.device, dtype=dtype,
                        engine=cfg.engine, snapshots=True, progress=ctx.progress)
    steps = grid(cfg.steps, cfg.records)
    out = {"steps": steps, "time": steps * cfg.lr, "teacher": task.teacher.numpy(), "initial_particles": X0.numpy()}
    snap = {v: torch.from_numpy(runs[v].on_grid("snapshots", steps)) for v in ("dropout", "ram")}
    outputs = {v: torch.from_numpy(runs[v].on_grid("outputs", steps)) for v in ("dropout", "ram", "gd")}
    out["gap_particle"] = particle_distance(snap["dropout"], snap["ram"]).numpy()
    out["gap_output"] = output_gap(outputs["dropout"], outputs["ram"]).numpy()
    out["gap_output_dropout_gd"] = output_gap(outputs["dropout"], outputs["gd"]).numpy()
    for v, res in runs.items():
        out[f"{v}_steps"] = res.steps.numpy()  # as recorded: up to the step before a divergence
        out[f"{v}_train_risk"] = res.risk.numpy()
        out[f"{v}_test_risk"] = res.test_risk.numpy()
        out[f"{v}_grid_train_risk"] = res.on_grid("risk", steps)
        out[f"{v}_grid_test_risk"] = res.on_grid("test_risk", steps)
        out[f"{v}_final_particles"] = res.particles.numpy()
        out[f"{v}_diverged_at_step"] = res.diverged_at_step
    return out


def figures(out: dict, cfg: Config):
    """The two figures: risks of the four variants; coupled dropout–RaM gap."""
    from .._plot import subplots

    fig1, axes = subplots(1, 2, figsize=(10, 3.8))  # each panel its own scale: the test risks differ by 1%
    for ax, which in zip(axes, ("train", "test"), strict=True):
        for v in COMPARED:
            t = out[f"{v}_steps"] * cfg.lr
            y = out[f"{v}_{which}_risk"]
            plot_variant(ax, t, y, v, lw=1.6, ms=4)
            mark_divergence(ax, t[-1], y[-1], COLORS[v], out[f"{v}_diverged_at_step"])
        ax.set_yscale("log")
        ax.set_xlabel("time t = k·τ")
        ax.set_title(f"{which} risk")
        ax.set_ylabel("½‖f − y‖²")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig1.suptitle(f"teacher–student, width n={cfg.width}, τ={cfg.lr}, q={cfg.keep} "
                  f"(α={cfg.lr / cfg.keep:.3g}, β={1 / (cfg.width * cfg.keep):.2g})", fontsize=10)

    fig2, ax = subplots(figsize=(6, 3.8))
    t = out["time"]
    ax.plot(t, out["gap_particle"], color="C3", label="(1/n) Σ|X_i^drop − X_i^RaM|²")
    ax.plot(t, out["gap_output"], color="C0", label="‖f(drop) − f(RaM)‖ (test inputs)")
    ax.plot(t[: len(out["gap_output_dropout_gd"])], out["gap_output_dropout_gd"], color="k", ls=":",
            label="‖f(drop) − f(GD)‖ for scale")
    if np.nanmax(np.r_[out["gap_particle"], out["gap_output"], 0.0]) > 0:  # all zero or NaN: no log axis
        ax.set_yscale("log")
    ax.set_xlabel("time t = k·τ")
    ax.set_ylabel("distance between the coupled runs")
    ax.set_title("coupled dropout vs RaM (same masks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig1, fig2


def write(folder, cfg: Config, res: dict) -> dict:
    """metrics.csv, arrays.npz, risk and gap figures; returns the summary."""
    cols = {"step": res["steps"], "time": res["time"]}
    for v in COMPARED:  # every variant on the same grid; a diverged one ends early (NaN after)
        cols[f"{v}_train_risk"] = res[f"{v}_grid_train_risk"]
        cols[f"{v}_test_risk"] = res[f"{v}_grid_test_risk"]
    cols["gap_particle_dropout_ram"] = res["gap_particle"]
    cols["gap_output_dropout_ram"] = res["gap_output"]
    cols["gap_output_dropout_gd"] = res["gap_output_dropout_gd"]
    folder.write_csv("metrics.csv", cols)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    fig1, fig2 = figures(res, cfg)
    folder.savefig(fig1, "risk")
    folder.savefig(fig2, "gap")
    return {
        "alpha": cfg.lr / cfg.keep, "beta": 1 / (cfg.width * cfg.keep),
        "diverged_at_step": {v: res[f"{v}_diverged_at_step"] for v in COMPARED},
        "final_train_risk": {v: float(res[f"{v}_train_risk"][-1]) for v in COMPARED},
        "final_test_risk": {v: float(res[f"{v}_test_risk"][-1]) for v in COMPARED},
        "final_gap_particle_dropout_ram": finite_or_none(res["gap_particle"][-1]),
        "final_gap_output_dropout_ram": finite_or_none(res["gap_output"][-1]),
        "final_gap_output_dropout_gd": finite_or_none(res["gap_output_dropout_gd"][-1]),
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """The phase of (n, τ, q) and the dropout–RaM gap against its O(√β) size (agreeing within a
    factor 3 of √β)."""
    ram, gd = s["final_gap_output_dropout_ram"], s["final_gap_output_dropout_gd"]
    near = "—" if ram is None or gd is None else f"‖f(dropout) − f(RaM)‖ = {ram:.3g} vs ‖f(dropout) − f(GD)‖ = {gd:.3g}"
    root_beta = s["beta"] ** 0.5
    return [("phase of (n, τ, q)", phase_line(c["width"], c["lr"], c["keep"]), near,
             verdict(None, "a classification; one width cannot tell RaM from GD, the width scaling does")),
            ("dropout–RaM output gap", f"O(√β) = {root_beta:.3g}",
             f"{ram:.3g}" if ram is not None else f"diverged at step {s['diverged_at_step']['dropout']}",
             verdict(None, "diverged") if ram is None else verdict(ram <= 3 * root_beta, "within a factor 3 of √β"))]


EXPERIMENT = Experiment(
    "teacher-student", "Figure 2 of the phase paper: dropout, RaM, penalty GD and GD on a teacher–student task; "
    "coupled dropout–RaM gap.", Config, compute, write, theory, order=0,
    smoke=dict(width=50, steps=20, records=5))
run = EXPERIMENT.run
