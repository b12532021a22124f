"""Sharpness trajectories across the phase diagram (docs/theory.md §1 "Diagnostics", §2).

One cell per phase, each a scaling family τ_n = c_lr·n^(−a), q_n = c_keep·n^(−b) of
docs/theory.md §2 (I: a = ½, b = 0; II: a = 5/4, b = 1; III: a = b = ½; IV: a = b = 1;
V: a = b = 0), at several widths. In each, dropout, RaM, penalty GD and GD run from the same
particles on the teacher–student task (masks shared), and the phase paper's authors'
diagnostics (`simulate(..., diagnostics_every=k)`, docs/theory.md §1) are taken along
training: the sharpness λ_max(n∇²R), the batch sharpness (the full batch: one value) and the
dropout batch sharpness E_M[gᵀHg/‖g‖²] of the network thinned by a mask, with its standard
error. Each is set against GD's edge 2/τ (a moving neuron of dropout or RaM steps τ/q, whose
edge is 2q/τ).

The questions (docs/phase-diagram.md): which variants sit at the edge, in which phases; and
does RaM's bypass show as λ_max above 2/τ while its dropout batch sharpness stays at the
edge? Writes ``metrics.csv`` (every diagnosis), ``arrays.npz`` and ``trajectories.png``
(λ_max·τ/2 and the dropout batch sharpness·τ/2 over training: 1 is the edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import mean_field_init
from ..engine import simulate
from ..lab import Context, Experiment, Runtime, setting, verdict
from ..lab.settings import at_least, positive, probability
from ..phase import scaling
from ._runtime import widths_setting
from .teacher_student import Task

FAMILIES = {"I": (0.5, 0.0), "II": (1.25, 1.0), "III": (0.5, 0.5), "IV": (1.0, 1.0), "V": (0.0, 0.0)}
VARIANTS = ("gd", "dropout", "ram", "penalty")
SERIES = ("sharpness", "batch_sharpness", "dropout_batch_sharpness", "dropout_batch_sharpness_se")


@dataclass
class Config(Task, Runtime):
    dim: int = setting(5, "input dimension d")
    n_train: int = setting(50, "training samples")
    n_test: int = setting(10, "held-out samples (unused here)")
    label_noise: float = setting(0.0, "standard deviation of the label noise")
    widths: tuple[int, ...] = widths_setting((100, 400), "widths n")
    c_lr: float = setting(4.0, "constant of τ_n = c_lr·n^−a (phase V's step: at n = 1 every family's)", positive())
    c_keep: float = setting(0.5, "constant of q_n = c_keep·n^−b", probability())
    steps: int = setting(1000, "steps per run", at_least(1))
    diagnoses: int = setting(10, "diagnoses over the run", at_least(1))
    samples: int = setting(20, "masks per dropout batch sharpness", at_least(2))


def compute(cfg: Config, ctx: Context) -> dict:
    task = cfg.task(torch.Generator().manual_seed(cfg.seed))
    every = max(1, cfg.steps // cfg.diagnoses)
    out: dict = {"widths": np.array(sorted(cfg.widths))}
    bar = ctx.bar(len(FAMILIES) * len(cfg.widths) * len(VARIANTS) * cfg.steps, "sharpness-phases")
    for phase, (a, b) in FAMILIES.items():
        for n in sorted(cfg.widths):
            lr, keep = scaling(n, a, b, cfg.c_lr, cfg.c_keep)
            X0 = mean_field_init(n, cfg.dim, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + n))
            out[f"{phase}/{n}/lr"], out[f"{phase}/{n}/keep"] = np.array(lr), np.array(keep)
            for v in VARIANTS:
                res = simulate(v, X0, task.inputs, task.targets, lr=lr, keep=keep, steps=cfg.steps,
                               activation=cfg.activation, seed=cfg.seed + 1, record_every=cfg.steps,
                               diagnostics_every=every, diagnostic_samples=cfg.samples, device=cfg.device,
                               dtype=getattr(torch, cfg.dtype), progress=bar)
                out[f"{phase}/{n}/{v}/steps"] = res.diagnostic_steps.numpy()
                for s in SERIES:
                    out[f"{phase}/{n}/{v}/{s}"] = res.diagnostics[s].numpy()
                out[f"{phase}/{n}/{v}/diverged_at_step"] = res.diverged_at_step
    bar.close()
    return out


def late(x: np.ndarray) -> float:
    """The mean of the last half of a run's diagnoses (the first, at step 0, left out)."""
    x = np.asarray(x, dtype=float)[1:]
    return float(np.mean(x[len(x) // 2:])) if len(x) else float("nan")


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    n = int(res["widths"][-1])
    fig, axes = subplots(2, len(FAMILIES), figsize=(3.3 * len(FAMILIES), 6.0), squeeze=False, sharey="row")
    for j, phase in enumerate(FAMILIES):
        lr, keep = float(res[f"{phase}/{n}/lr"]), float(res[f"{phase}/{n}/keep"])
        for i, v in enumerate(VARIANTS):
            steps = res[f"{phase}/{n}/{v}/steps"]
            color = "k" if v == "gd" else f"C{i}"
            axes[0, j].plot(steps, res[f"{phase}/{n}/{v}/sharpness"] * lr / 2, color=color, lw=1, label=v)
            db = res[f"{phase}/{n}/{v}/dropout_batch_sharpness"] * lr / 2
            se = res[f"{phase}/{n}/{v}/dropout_batch_sharpness_se"] * lr / 2
            axes[1, j].plot(steps, db, color=color, lw=1, label=v)
            axes[1, j].fill_between(steps, db - 2 * se, db + 2 * se, color=color, alpha=0.15, lw=0)
        for ax in axes[:, j]:
            ax.axhline(1.0, color="grey", ls="--", lw=0.8)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0, j].set_title(f"phase {phase}: τ = {lr:.3g}, q = {keep:.3g} (n = {n})", fontsize=8)
        axes[1, j].set_xlabel("step")
    axes[0, 0].set_ylabel("λ_max · τ/2")
    axes[1, 0].set_ylabel("dropout batch sharpness · τ/2 (±2 s.e.)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("the edge of stability across the phases: 1 is GD's edge 2/τ", fontsize=10)
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    rows: dict = {k: [] for k in ("phase", "width", "variant", "lr", "keep", "step", *SERIES)}
    late_values: dict = {}
    for phase in FAMILIES:
        for n in res["widths"]:
            lr, keep = float(res[f"{phase}/{n}/lr"]), float(res[f"{phase}/{n}/keep"])
            for v in VARIANTS:
                key = f"{phase}/{n}/{v}"
                for j, k in enumerate(res[f"{key}/steps"]):
                    for name, val in (("phase", phase), ("width", int(n)), ("variant", v), ("lr", lr),
                                      ("keep", keep), ("step", int(k)), *((s, res[f"{key}/{s}"][j]) for s in SERIES)):
                        rows[name].append(val)
                late_values[key] = {"lambda_max_over_edge": late(res[f"{key}/sharpness"]) * lr / 2,
                                    "dropout_batch_sharpness_over_edge":
                                        late(res[f"{key}/dropout_batch_sharpness"]) * lr / 2,
                                    "se_over_edge": late(res[f"{key}/dropout_batch_sharpness_se"]) * lr / 2,
                                    "diverged_at_step": res[f"{key}/diverged_at_step"]}
    folder.write_csv("metrics.csv", rows)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    folder.savefig(figure(res, cfg), "trajectories")
    return {"late": late_values, "largest_width": int(res["widths"][-1])}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """GD at the edge in phase V; RaM's bypass there; the other phases' distance from the edge."""
    n, late_ = s["largest_width"], s["late"]
    gd = late_[f"V/{n}/gd"]["lambda_max_over_edge"]
    ram = late_[f"V/{n}/ram"]
    above = ram["lambda_max_over_edge"] > 1.0
    at_edge = ram["dropout_batch_sharpness_over_edge"] <= 1.0 + 2 * ram["se_over_edge"]
    others = {f"{p}/{v}": late_[f"{p}/{n}/{v}"]["lambda_max_over_edge"] for p in FAMILIES if p != "V"
              for v in VARIANTS if late_[f"{p}/{n}/{v}"]["diverged_at_step"] is None}
    diverged = sorted(k for k, v in late_.items() if v["diverged_at_step"] is not None)
    top = max(others, key=others.get)
    return [
        ("GD at the edge in phase V (τ fixed)", "λ_max·τ/2 = 1 late in the run (within 10%)",
         f"{gd:.3g} (n = {n})", verdict(abs(gd - 1) <= 0.1, "the mean of the run's last half")),
        ("RaM's bypass in phase V", "λ_max above 2/τ while the dropout batch sharpness stays at or below 2/τ",
         f"λ_max·τ/2 = {ram['lambda_max_over_edge']:.3g}, dropout batch sharpness·τ/2 = "
         f"{ram['dropout_batch_sharpness_over_edge']:.3g} ± {ram['se_over_edge']:.2g} (n = {n})",
         verdict(above and at_edge, "last-half means; at the edge within 2 standard errors")),
        ("phases I–IV: τ_n → 0 leaves every variant below the edge",
         "λ_max·τ/2 < 1 at the largest width, in the runs that did not diverge",
         f"largest {others[top]:.3g} ({top}, n = {n}); diverged: {', '.join(diverged) or 'none'}",
         verdict(others[top] < 1.0, "last-half means")),
    ]


EXPERIMENT = Experiment("sharpness-phases", "sharpness trajectories across the phase diagram: λ_max, batch and "
                        "dropout batch sharpness of dropout, RaM, penalty GD and GD in a cell of each phase, against "
                        "the edge 2/τ.", Config, compute, write, theory, order=58,
                        smoke=dict(widths=(20, 40), steps=10, diagnoses=2, samples=2, n_train=10))
run = EXPERIMENT.run
