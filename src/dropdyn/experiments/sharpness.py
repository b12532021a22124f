"""Sharpness bypass (docs/theory.md §2): how large a step can GD and RaM take?

On a mean-field two-layer network (teacher–student task), sweep the step size τ and
run GD and RaM with keep q for a fixed number of steps from the same start. A run is
*stable* if it did not diverge and ended below its initial risk. RaM's *mean* step is
τ (E[mask/q] = 1), but a neuron that moves takes the step τ/q. The claim: single
neurons can take steps larger than plain GD tolerates while the average step stays
stable. The local sharpness λ — the top eigenvalue of n∇²R in particle coordinates,
by Lanczos on Hessian-vector products — is recorded at the start and at a
GD solution, with the quadratic-model bound τ < 2/λ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import InputError
from ..curvature import mean_field_sharpness
from ..data import mean_field_init, teacher_student
from ..engine import simulate
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import Settings, at_least, available_device, each, positive, probability, valid_seed
from ._runtime import activation_setting


@dataclass
class Config(Settings):
    width: int = setting(200, "width n", at_least(1))
    dim: int = setting(5, "input dimension d", at_least(1))
    teacher_width: int = setting(5, "neurons of the teacher", at_least(1))
    n_train: int = setting(50, "training samples", at_least(1))
    steps: int = setting(1000, "steps per run", at_least(1))
    lr_min: float = setting(0.5, "smallest step τ of the sweep", positive())
    lr_max: float = setting(20.0, "largest step τ of the sweep", positive())
    points: int = setting(30, "step sizes in the sweep (geometric)", at_least(2))
    keeps: tuple[float, ...] = setting((0.5, 0.2), "RaM keep rates", each(probability()))
    activation: str = activation_setting()
    seed: int = setting(0, "seed of data, initialisation and masks", valid_seed())
    device: str = setting("cpu", "cpu or cuda", available_device())

    def resolved(self) -> Config:
        if self.lr_max <= self.lr_min:
            raise InputError(f"lr_max must exceed lr_min, got {self.lr_max!r} <= {self.lr_min!r}")
        return self


def compute(cfg: Config, ctx: Context) -> dict:
    g = torch.Generator().manual_seed(cfg.seed)
    task = teacher_student(dim=cfg.dim, teacher_width=cfg.teacher_width, n_train=cfg.n_train, n_test=10,
                           activation=cfg.activation, generator=g)
    X0 = mean_field_init(cfg.width, cfg.dim, generator=g).to(cfg.device)
    Z, y = task.inputs.to(cfg.device), task.targets.to(cfg.device)
    lam0 = mean_field_sharpness(X0, Z, y, cfg.activation)
    runs = {"gd": 1.0, **{f"ram q={q:g}": q for q in cfg.keeps}}
    bar = ctx.bar((20 + len(runs) * cfg.points) * cfg.steps, "GD solution")
    sol = simulate("gd", X0, Z, y, lr=min(1.0, 1.0 / lam0), keep=1.0, steps=20 * cfg.steps,
                   activation=cfg.activation, record_every=20 * cfg.steps, progress=bar).particles
    lam_star = mean_field_sharpness(sol, Z, y, cfg.activation)
    lrs = np.geomspace(cfg.lr_min, cfg.lr_max, cfg.points)
    out = {"lr": lrs, "lambda_init": lam0, "lambda_solution": lam_star, "keeps": runs}
    for name, q in runs.items():
        final, stable, diverged = [], [], []
        for lr in lrs:
            bar.set_description(f"{name}, τ={lr:.3g}")
            r = simulate("gd" if q == 1.0 else "ram", X0, Z, y, lr=float(lr), keep=q, steps=cfg.steps,
                         activation=cfg.activation, record_every=cfg.steps, seed=cfg.seed + 1, progress=bar)
            ok = r.diverged_at_step is None and float(r.risk[-1]) < float(r.risk[0])
            final.append(float(r.risk[-1]) if r.diverged_at_step is None else np.inf)
            stable.append(ok)
            diverged.append(r.diverged_at_step)
        out[name] = {"final_risk": np.array(final), "stable": np.array(stable), "diverged_at_step": diverged}
        ok_lrs = lrs[np.array(stable)]
        out[name]["largest_stable_mean_step"] = float(ok_lrs.max()) if len(ok_lrs) else float("nan")
        out[name]["largest_stable_neuron_step"] = out[name]["largest_stable_mean_step"] / q
    bar.close()
    return out


def figure(res: dict):
    from .._plot import subplots

    fig, axes = subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (name, q) in enumerate(res["keeps"].items()):
        r = res[name]
        for ax, scale in zip(axes, (1.0, 1.0 / q), strict=True):
            x = res["lr"] * scale
            y = np.where(np.isfinite(r["final_risk"]), r["final_risk"], np.nan)
            ax.loglog(x, y, "o-", color=f"C{i}", ms=3, label=name)
            bad = ~r["stable"]
            ax.plot(x[bad], np.full(bad.sum(), 1e2), "x", color=f"C{i}")
    for ax, lab in zip(axes, ("mean step τ", "per-neuron step τ/q of a moving neuron"), strict=True):
        for lam, ls in ((res["lambda_init"], ":"), (res["lambda_solution"], "--")):
            ax.axvline(2 / lam, color="0.4", ls=ls, lw=1)
        ax.set_xlabel(lab)
        ax.grid(alpha=0.3, which="both")
    axes[0].plot([], [], ":", color="0.4", label=f"2/λ at start (λ={res['lambda_init']:.2f})")
    axes[0].plot([], [], "--", color="0.4", label=f"2/λ at GD solution (λ={res['lambda_solution']:.2f})")
    axes[0].plot([], [], "x", color="k", label="unstable (×, drawn at 10²)")
    axes[0].set_ylabel("final train risk")
    axes[0].legend(fontsize=7)
    fig.suptitle("sharpness bypass: GD vs RaM from one start", fontsize=10)
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    cols = {"lr": res["lr"]}
    for name in res["keeps"]:
        cols[f"{name}_final_risk"] = res[name]["final_risk"]
        cols[f"{name}_stable"] = res[name]["stable"].astype(int)
        steps = res[name]["diverged_at_step"]
        cols[f"{name}_diverged_at_step"] = np.array([np.nan if k is None else k for k in steps])  # NaN: stable
    folder.write_csv("metrics.csv", cols)
    folder.write_npz("arrays.npz", cols)
    folder.savefig(figure(res), "sharpness")
    return {
        "lambda_init": res["lambda_init"], "lambda_solution": res["lambda_solution"],
        "bound_2_over_lambda_solution": 2 / res["lambda_solution"],
        "diverged_at_step": {name: {f"lr={lr:.4g}": k for lr, k in zip(res["lr"], res[name]["diverged_at_step"],
                                                                      strict=True) if k is not None}
                             for name in res["keeps"]},
        "largest_stable": {name: {"mean_step": res[name]["largest_stable_mean_step"],
                                  "neuron_step": res[name]["largest_stable_neuron_step"]}
                           for name in res["keeps"]},
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    bound, stable = s["bound_2_over_lambda_solution"], s["largest_stable"]["gd"]["mean_step"]
    return [("GD stable step", f"≤ 2/λ = {bound:.3g} (quadratic model)", f"{stable:.3g}",
             verdict(None if stable is None else stable <= bound, "the largest stable step against 2/λ at the "
                                                                  "solution"))]


EXPERIMENT = Experiment("sharpness", "sharpness bypass: largest stable step of GD vs RaM, with the top Hessian "
                        "eigenvalue.", Config, compute, write, theory, order=40,
                        smoke=dict(width=30, steps=20, points=4, lr_min=0.5, lr_max=30.0, keeps=(0.5,)))
run = EXPERIMENT.run
