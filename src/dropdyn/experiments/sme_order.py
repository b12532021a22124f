"""Weak order of the SMEs, Figure 1(b, c) of the SME paper (docs/theory.md §3).

For each keep p and learning rate η: R replicas of dropout (``T/η`` steps) and of the
order-1 and order-2 SMEs, all from one θ_0, and GD on L_S. Euler–Maruyama has weak order
1 in its sub-step h, an error that would otherwise mix with the η² signal of the order-2
SME, so every SME is run at ``h = η/m`` and ``η/2m`` and extrapolated (Talay–Tubaro /
Richardson: ``2 E Θ^{h/2} − E Θ^h`` has error O(h²) = O(η²/m²)); the size of that
correction, ``‖E Θ^{h/2} − E Θ^h‖``, is reported as the discretisation check.

The distance ``‖E Θ_T − E θ_T‖`` is estimated without Monte-Carlo bias: the replicas
are split into B batches, ``Δ_b`` = difference of the batch means, and
``‖Δ‖² ≈ (1/B(B−1)) Σ_{b≠b'} ⟨Δ_b, Δ_b'⟩`` (a U-statistic, unbiased), with a jackknife
standard error. Slopes of log‖Δ‖ against log η are fitted by weighted least squares over
the points that are resolved (estimate > 2 standard errors), with 95% intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import InputError
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import at_least, each, positive, probability
from ..sme_dynamics import simulate_sme
from ._sme import SMESettings, generator, problem

ORDERS = ("sme1", "sme2", "gd")


@dataclass
class Config(SMESettings):
    width: int = setting(20, "hidden neurons")
    train_size: int = setting(200, "use the first N training images (0 = all)")
    lrs: tuple[float, ...] = setting((0.2, 0.1, 0.05, 0.025), "learning rates η", each(positive()))
    keeps: tuple[float, ...] = setting((0.9, 0.5), "keep rates p", each(probability()))
    time: float = setting(0.8, "time T (a multiple of every η)", positive())
    substeps: int = setting(4, "Euler–Maruyama sub-steps per dropout step (and twice that, for Richardson)",
                            at_least(1))
    replicas: int = setting(400, "replicas of each stochastic dynamics (a multiple of batches)", at_least(2))
    batches: int = setting(20, "replica batches of the unbiased distance estimate", at_least(2))
    dtype: str = setting("float32", "float64 or float32")

    def resolved(self) -> Config:
        if self.replicas % self.batches:
            raise InputError(f"replicas ({self.replicas}) must be a multiple of batches ({self.batches})")
        for lr in self.lrs:
            if abs(round(self.time / lr) * lr - self.time) > 1e-9 * self.time:
                raise InputError(f"time {self.time!r} must be a multiple of every learning rate, not of {lr!r}")
        return self


def distance(a: torch.Tensor, b: torch.Tensor, batches: int) -> tuple[float, float]:
    """Unbiased estimate of ``‖E a − E b‖²`` from replicas ``a``, ``b`` ``(R, ...)`` (``b`` may
    have one replica: a deterministic run) and its jackknife standard error."""
    R = a.shape[0]
    A = a.double().reshape(batches, R // batches, -1).mean(1)
    B = b.double().reshape(b.shape[0] if b.shape[0] == 1 else batches, -1, A.shape[1]).mean(1)
    D = A - B
    total, sq = D.sum(0), D.square().sum(1)

    def u_stat(S, Q, k):
        return float((S.square().sum() - Q.sum()) / (k * (k - 1)))

    est = u_stat(total, sq, batches)
    loo = np.array([u_stat(total - D[j], sq[torch.arange(batches) != j], batches - 1) for j in range(batches)])
    se = float(np.sqrt((batches - 1) / batches * ((loo - loo.mean()) ** 2).sum()))
    return est, se


def fit_slope(lrs, est, se) -> dict:
    """Weighted least squares of ``log‖Δ‖ = c + slope·log η`` over resolved points."""
    lrs, est, se = map(np.asarray, (lrs, est, se))
    ok = est > 2 * se
    out = {"resolved_points": int(ok.sum())}
    if ok.sum() < 2:
        return out | {"slope": None, "ci95": None}
    x, y = np.log(lrs[ok]), 0.5 * np.log(est[ok])
    s = np.maximum(se[ok] / (2 * est[ok]), 1e-12)  # SE of log‖Δ‖ = SE(‖Δ‖²) / (2‖Δ‖²)
    W = 1 / s**2
    X = np.stack([np.ones_like(x), x], 1)
    cov = np.linalg.inv(X.T @ (W[:, None] * X))
    beta = cov @ X.T @ (W * y)
    dof = len(x) - 2
    if dof > 0:  # scale by the residual variance when there are spare points
        chi2 = float((W * (y - X @ beta) ** 2).sum() / dof)
        cov = cov * max(chi2, 1.0)
        from scipy.stats import t

        q = float(t.ppf(0.975, dof))
    else:
        q = 1.96
    half = q * math.sqrt(cov[1, 1])
    return out | {"slope": float(beta[1]), "ci95": [float(beta[1] - half), float(beta[1] + half)]}


def compute(cfg: Config, ctx: Context) -> dict:
    P = problem(cfg)
    res: dict = {"lrs": list(cfg.lrs), "keeps": list(cfg.keeps)}
    runs = 1 + sum(1 if dyn == "gd" else 2 for dyn in ORDERS)  # dropout, GD, each SME at two sub-steps
    bar = ctx.bar(len(res["keeps"]) * sum(runs * round(cfg.time / lr) for lr in res["lrs"]), "sme-order")
    common = dict(activation=cfg.activation, record_every=10**9, progress=bar)
    for i, p in enumerate(res["keeps"]):
        for j, lr in enumerate(res["lrs"]):
            bar.set_description(f"p={p:g}, η={lr:g}")
            steps = round(cfg.time / lr)
            g = generator(cfg, 100 * i + j)
            drop = simulate_sme("dropout", P.theta0, P.inputs, P.targets, lr=lr, keep=p, steps=steps,
                            replicas=cfg.replicas, generator=g, **common)
            for dyn in ORDERS:
                if dyn == "gd":
                    runs = [simulate_sme(dyn, P.theta0, P.inputs, P.targets, lr=lr, keep=p, steps=steps, **common)]
                else:
                    runs = [simulate_sme(dyn, P.theta0, P.inputs, P.targets, lr=lr, keep=p, steps=steps,
                                     replicas=cfg.replicas, substep=lr / m, generator=g, **common)
                            for m in (cfg.substeps, 2 * cfg.substeps)]
                diverged = drop.diverged_at_step or next((r.diverged_at_step for r in runs if r.diverged_at_step), None)
                if diverged:  # no weak error at T: kept as NaN, the step recorded
                    res[f"{p}/{lr}/{dyn}"] = {"sq": math.nan, "se": math.nan, "diverged_at_step": diverged}
                    if dyn != "gd":
                        res[f"{p}/{lr}/{dyn}/discretisation"] = {"sq": math.nan, "se": math.nan}
                    continue
                final = runs[0].particles if dyn == "gd" else 2 * runs[1].particles - runs[0].particles
                est, se = distance(drop.particles, final, cfg.batches)
                res[f"{p}/{lr}/{dyn}"] = {"sq": est, "se": se, "diverged_at_step": None}
                if dyn != "gd":
                    est, se = distance(runs[1].particles, runs[0].particles, cfg.batches)
                    res[f"{p}/{lr}/{dyn}/discretisation"] = {"sq": est, "se": se}
            # Monte-Carlo scale: the standard error of one replica mean, for comparison
            res[f"{p}/{lr}/mc_error"] = float(drop.mean_error[-1])
    bar.close()
    for p in res["keeps"]:
        for dyn in ORDERS:
            pts = [res[f"{p}/{lr}/{dyn}"] for lr in res["lrs"]]
            res[f"{p}/{dyn}/fit"] = fit_slope(res["lrs"], [q["sq"] for q in pts], [q["se"] for q in pts])
    return res


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    fig, axes = subplots(1, 3, figsize=(14, 4.2), sharey=True)
    lrs = np.array(res["lrs"])
    titles = {"sme1": "order-1 SME", "sme2": "order-2 SME", "gd": "GD on L_S (no noise)"}
    for ax, dyn in zip(axes, ORDERS, strict=True):
        for c, p in enumerate(res["keeps"]):
            sq = np.array([res[f"{p}/{lr}/{dyn}"]["sq"] for lr in lrs])
            se = np.array([res[f"{p}/{lr}/{dyn}"]["se"] for lr in lrs])
            val = np.sqrt(np.clip(sq, 0, None))
            lo = np.sqrt(np.clip(sq - 2 * se, 0, None))
            hi = np.sqrt(np.clip(sq + 2 * se, 0, None))
            fit = res[f"{p}/{dyn}/fit"]
            lab = f"p={p:g}" + (f": slope {fit['slope']:.2f} [{fit['ci95'][0]:.2f}, {fit['ci95'][1]:.2f}]"
                                if fit["slope"] is not None else ": unresolved")
            gone = [f"{lr:g}" for lr in lrs if res[f"{p}/{lr}/{dyn}"]["diverged_at_step"]]
            lab += f" (diverged at η = {', '.join(gone)})" if gone else ""
            col = f"C{c}"
            ax.errorbar(lrs, val, yerr=[val - lo, hi - val], fmt="o-", color=col, capsize=3, label=lab)
            ax.plot(lrs, np.sqrt(2 * np.clip(se, 0, None)), ":", color=col, lw=1)
            if dyn != "gd":
                dsc = np.array([res[f"{p}/{lr}/{dyn}/discretisation"]["sq"] for lr in lrs])
                ax.plot(lrs, np.sqrt(np.clip(dsc, 0, None)), "v", color=col, ms=6, alpha=0.6)
        ref = lrs / lrs.max()
        top = max(np.sqrt(np.clip([res[f"{p}/{lrs.max()}/{dyn}"]["sq"] for p in res["keeps"]], 1e-30, None)))
        order = 2 if dyn == "sme2" else 1
        ax.plot(lrs, top * ref**order, "k--", lw=1, label=f"slope {order}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
        ax.minorticks_off()
        ax.set_xlabel("learning rate η")
        ax.set_title(titles[dyn], fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"‖E Θ_T − E θ_T‖ at T = {cfg.time:g}")
    fig.suptitle(f"weak error vs η ({cfg.replicas} replicas in {cfg.batches} batches; dotted: 2-SE Monte-Carlo "
                 f"floor; ▽: ‖EΘ(h/2) − EΘ(h)‖, the Euler–Maruyama correction), width {cfg.width}, "
                 f"{cfg.input_size}×{cfg.input_size} MNIST",
                 fontsize=9)
    fig.tight_layout()
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    rows = {"keep": [], "lr": [], **{f"{d}_{k}": [] for d in ORDERS for k in ("sq", "se")}, "mc_error": []}
    for p in res["keeps"]:
        for lr in res["lrs"]:
            rows["keep"].append(p)
            rows["lr"].append(lr)
            for d in ORDERS:
                rows[f"{d}_sq"].append(res[f"{p}/{lr}/{d}"]["sq"])
                rows[f"{d}_se"].append(res[f"{p}/{lr}/{d}"]["se"])
            rows["mc_error"].append(res[f"{p}/{lr}/mc_error"])
    folder.write_csv("weak_error.csv", {k: np.array(v) for k, v in rows.items()})
    folder.savefig(figure(res, cfg), "sme_order")
    return {
        "paper_slopes": {"sme1": 1, "sme2": 2},
        "slopes": {f"{d}/p={p:g}": res[f"{p}/{d}/fit"] for p in res["keeps"] for d in ORDERS},
        "discretisation": {f"{d}/p={p:g}/lr={lr:g}": math.sqrt(max(res[f"{p}/{lr}/{d}/discretisation"]["sq"], 0))
                           for p in res["keeps"] for lr in res["lrs"] for d in ("sme1", "sme2")
                           if not res[f"{p}/{lr}/{d}"]["diverged_at_step"]},
        "diverged_at_step": {f"{d}/p={p:g}/lr={lr:g}": res[f"{p}/{lr}/{d}"]["diverged_at_step"]
                             for p in res["keeps"] for lr in res["lrs"] for d in ORDERS},
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for k, v in s["slopes"].items():
        paper = s["paper_slopes"].get(k.split("/")[0], 1)
        judged = verdict(None, "unresolved") if v["slope"] is None else verdict(
            v["ci95"][0] <= paper <= v["ci95"][1], "the paper's slope inside the 95% interval")
        rows.append((f"weak-order slope, {k}", f"{paper} (SME paper, Fig. 1b, c)", measured_slope(v), judged))
    return rows


def measured_slope(fit: dict) -> str:
    """A fitted slope with its interval, saying when the interval rests on two step sizes (a
    line through two points: the interval is their Monte-Carlo error, not a test of the power
    law)."""
    if fit["slope"] is None:
        return f"unresolved (Monte-Carlo error; {fit['resolved_points']} point(s) resolved)"
    lo, hi = fit["ci95"]
    two = " (2 step sizes resolved: the interval is their Monte-Carlo error alone)" \
        if fit["resolved_points"] == 2 else ""
    return f"{fit['slope']:.2f}  95% CI [{lo:.2f}, {hi:.2f}]{two}"


EXPERIMENT = Experiment("sme-order", "Figure 1(b, c) of the SME paper: weak error ‖EΘ − Eθ‖ vs η, fitted slopes.",
                        Config, compute, write, theory, order=71,
                        smoke=dict(width=6, train_size=60, replicas=4, lrs=(0.2, 0.1), keeps=(0.5,), time=0.2,
                                   substeps=2, batches=2))
run = EXPERIMENT.run
