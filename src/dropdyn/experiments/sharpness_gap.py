"""A dropout sharpness gap (docs/theory.md §3, "Dropout at the edge of stability").

Dropout GD on the SME paper's two-layer network (two MNIST digits, the full batch, so that
the masks are the only noise). The prediction: at a step η whose edge 2/η the sharpness
reaches, S = λ_max(∇²L_S) of the expected (modified) loss settles below 2/η by
ΔS = ηβσ_u²/(4α), with σ_u² = uᵀΣu the dropout noise variance along the top eigenvector u
(exact: ``sme.NoiseCovariance``), α = −∇L_S·∇S the rate of progressive sharpening and
β = ‖∇S‖², ∇S = ∇_θ(uᵀ∇²L_S(θ)u).

For each keep p, step η and seed (data split, initialisation and masks), a run first ramps
its step linearly from ``warmup_lr`` to η over ``warmup`` dropout steps (the initial
sharpness is above 2/η for the steps of interest, and a jump to η sends dropout's noisy
catapult to divergence), then takes ``steps`` steps at η, recorded every ``every``: S and
u by Lanczos on closed-form Hessian-vector products of L_S (warm-started from the last u),
σ_u², and ∇S by autograd through the closed-form product, giving α and β. Over those
records: the measured gap 2/η − mean S, and the predicted gap η·β̄·σ̄_u²/(4ᾱ) from their
means (none where ᾱ ≤ 0: the prediction assumes progressive sharpening). GD (p = 1:
σ_u² = 0) at each η is the noiseless reference: it sits at the edge, S = 2/η.

Writes ``gaps.csv`` (one row per run), ``trajectories.csv`` (every record), ``arrays.npz``
and two figures: ``gap.png`` (measured gap and mean α per cell, 95% intervals over seeds,
with the predicted gap where there is one) and ``sharpness.png`` (S over training against
2/η, one seed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .. import sme
from ..diagnostics import lanczos
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import at_least, each, positive, probability
from ._sme import SMESettings, problem

QUANTITIES = ("sharpness", "sigma_u2", "alpha", "beta", "x2", "loss")
MEANS = QUANTITIES[:5]
DIVERGED = 1e6  # a parameter this large (the network starts with entries of order 1/√d): the run diverged


@dataclass
class Config(SMESettings):
    input_size: int = setting(14, "image side after pooling (28 = full resolution)")
    width: int = setting(32, "hidden neurons", at_least(1))
    train_size: int = setting(256, "use the first N training images (0 = all)", at_least(0))
    keeps: tuple[float, ...] = setting((0.5, 0.7, 0.9, 1.0), "keep rates p (1: GD)", each(probability()))
    lrs: tuple[float, ...] = setting((0.15, 0.2, 0.3), "learning rates η", each(positive()))
    seeds: int = setting(5, "seeds per (p, η): data split, initialisation and masks", at_least(2))
    warmup: int = setting(1500, "steps of the ramp from warmup_lr to η", at_least(0))
    warmup_lr: float = setting(0.1, "first step of the ramp", positive())
    steps: int = setting(3000, "recorded steps per run, at η", at_least(1))
    every: int = setting(50, "steps between records", at_least(1))
    iterations: int = setting(20, "Lanczos iterations per record", at_least(2))


def sharpness_gradient(theta: torch.Tensor, inputs, targets, keep: float, u: torch.Tensor,
                       activation: str) -> torch.Tensor:
    """``∇S = ∇_θ (uᵀ ∇²L_S(θ) u)`` for a unit ``u`` of θ's shape: autograd through the
    closed-form Hessian-vector product (the third derivative ∇³L_S[u, u])."""
    th = theta.detach().requires_grad_(True)
    Hu = sme.hessian_vector_product(th, inputs, targets, keep, u, activation)
    return torch.autograd.grad((Hu * u).sum(), th)[0]


def edge_quantities(theta: torch.Tensor, inputs, targets, keep: float, start: torch.Tensor, iterations: int,
                    activation: str) -> tuple[dict[str, float], torch.Tensor]:
    """S, σ_u², α, β and L_S at θ, and the top eigenvector u (flat), by ``iterations`` Lanczos
    steps from ``start``."""
    shape = theta.shape
    S, u = lanczos(lambda v: sme.hessian_vector_product(theta, inputs, targets, keep, v.view(shape),
                                                        activation).reshape(-1), start, iterations)
    U = (u / u.norm()).view(shape)
    gS = sharpness_gradient(theta, inputs, targets, keep, U, activation)
    gL = sme.modified_loss_grad(theta, inputs, targets, keep, activation)
    sigma = 0.0 if keep == 1 else float((U * sme.NoiseCovariance(theta, inputs, targets, keep, activation,
                                                                   validate=False).matvec(U)).sum())
    return {"sharpness": S, "sigma_u2": sigma, "alpha": -float((gL * gS).sum()), "beta": float((gS * gS).sum()),
            "loss": float(sme.modified_loss(theta, inputs, targets, keep, activation))}, u


def run_one(cfg: Config, keep: float, lr: float, seed: int, bar) -> dict[str, np.ndarray]:
    """One dropout GD run: the ramp, then ``steps`` steps at η in blocks of ``every``. Each
    block is recorded at its mean θ̄ (the iterates oscillate along u about the point the theory
    expands around; the mean cancels the oscillation): S, σ_u², α, β and L_S there, and
    ``x2`` = the mean of (uᵀ(θ_t − θ̄))² over the block's iterates. Returns the blocks' last
    steps (counted from the end of the ramp), each quantity, and ``diverged`` (the step whose
    state had an entry beyond :data:`DIVERGED` or not finite, counted the same way, or −1)."""
    prob = problem(dataclasses.replace(cfg, seed=seed))
    X, y, theta = prob.inputs, prob.targets, prob.theta0.clone()
    g = torch.Generator(device=theta.device).manual_seed(seed + 1)
    start = torch.randn(theta.numel(), generator=g, dtype=theta.dtype, device=theta.device)
    out: dict[str, list] = {"step": [], **{k: [] for k in QUANTITIES}}
    block: list[torch.Tensor] = []
    diverged, k = -1, -cfg.warmup
    for k in range(-cfg.warmup, cfg.steps + 1):
        if not bool(theta.abs().max() < DIVERGED):  # NaN fails too
            diverged = k
            break
        if k > 0:
            block.append(theta)
        if block and (k % cfg.every == 0 or k == cfg.steps):
            path = torch.stack(block)
            mean = path.mean(0)
            q, start = edge_quantities(mean, X, y, keep, start, cfg.iterations, cfg.activation)
            u = (start / start.norm()).view(mean.shape)
            q["x2"] = float(((path - mean) * u).sum((1, 2)).square().mean())
            out["step"].append(k)
            for name in QUANTITIES:
                out[name].append(q[name])
            block = []
        if k == cfg.steps:
            break
        eta = lr if k >= 0 else cfg.warmup_lr + (lr - cfg.warmup_lr) * (k + cfg.warmup) / cfg.warmup
        mask = (torch.rand(cfg.width, generator=g, dtype=theta.dtype, device=theta.device) < keep) / keep
        theta = theta - eta * sme.dropout_gradient(theta, X, y, mask.to(theta.dtype), cfg.activation)
        bar.update(1)
    bar.update(cfg.steps - k)
    return {**{name: np.asarray(v, dtype=float) for name, v in out.items()}, "diverged": np.array(diverged)}


def gaps(run: dict[str, np.ndarray], lr: float) -> dict[str, float]:
    """One run's measured and predicted gaps over its records (NaN for a run that diverged)."""
    if int(run["diverged"]) != -1 or not len(run["step"]):
        return {"measured": float("nan"), "predicted": float("nan"), "peak": float("nan"), "balance": float("nan"),
                **{f"mean_{k}": float("nan") for k in MEANS}}
    means = {k: float(run[k].mean()) for k in MEANS}
    predicted = 0.0 if means["sigma_u2"] == 0 else lr * means["beta"] * means["sigma_u2"] / (4 * means["alpha"]) \
        if means["alpha"] > 0 else float("nan")
    return {"measured": 2 / lr - means["sharpness"], "predicted": predicted,
            "peak": float(run["sharpness"].max() * lr / 2), "balance": 2 * means["alpha"] / means["beta"],
            **{f"mean_{k}": v for k, v in means.items()}}


def compute(cfg: Config, ctx: Context) -> dict:
    out: dict = {"keeps": np.array(cfg.keeps, dtype=float), "lrs": np.array(cfg.lrs, dtype=float)}
    bar = ctx.bar(len(cfg.keeps) * len(cfg.lrs) * cfg.seeds * (cfg.warmup + cfg.steps), "sharpness-gap")
    for p in cfg.keeps:
        for lr in cfg.lrs:
            for s in range(cfg.seeds):
                for name, v in run_one(cfg, p, lr, cfg.seed + s, bar).items():
                    out[f"p={p:g}/lr={lr:g}/seed={s}/{name}"] = v
    bar.close()
    return out


def mean_interval(x) -> tuple[float, float]:
    """Mean and 95% t half-width of the finite entries of ``x`` (NaN where too few)."""
    x = np.asarray([v for v in x if np.isfinite(v)], dtype=float)
    if len(x) < 2:
        return (float(x[0]) if len(x) else float("nan")), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def cells(res: dict, cfg: Config) -> list[dict]:
    """One row per (p, η): its runs' gaps, and over the runs that did not diverge the means
    with 95% intervals of the measured gap, ᾱ, the peak S·η/2, the predicted gap, σ̄_u², the
    oscillation E x² along u and the 2ᾱ/β̄ that a stationary S needs it to be."""
    rows = []
    for p in cfg.keeps:
        for lr in cfg.lrs:
            key = f"p={p:g}/lr={lr:g}"
            runs = [gaps({k: res[f"{key}/seed={s}/{k}"] for k in ("step", "diverged", *QUANTITIES)}, lr)
                    for s in range(cfg.seeds)]
            row = {"keep": p, "lr": lr, "runs": runs, "stable": sum(np.isfinite(r["measured"]) for r in runs),
                   "predictions": sum(np.isfinite(r["predicted"]) for r in runs)}
            for name, field in (("measured", "measured"), ("alpha", "mean_alpha"), ("peak", "peak"),
                                ("predicted", "predicted"), ("sigma_u2", "mean_sigma_u2"), ("x2", "mean_x2"),
                                ("balance", "balance")):
                row[name], row[f"{name}_ci"] = mean_interval([r[field] for r in runs])
            rows.append(row)
    return rows


def figure_gap(rows: list[dict], cfg: Config):
    from .._plot import subplots

    fig, axes = subplots(1, 2, figsize=(9.2, 3.8))
    for j, lr in enumerate(cfg.lrs):
        sel = [r for r in rows if r["lr"] == lr and r["stable"]]
        x = [r["keep"] + 0.01 * (j - 1) for r in sel]
        axes[0].errorbar(x, [r["measured"] for r in sel], yerr=[r["measured_ci"] for r in sel], fmt="o-", ms=4,
                         capsize=2, color=f"C{j}", label=f"measured, η = {lr:g}")
        pred = [(xi, r["predicted"]) for xi, r in zip(x, sel, strict=True) if np.isfinite(r["predicted"])]
        if pred:
            axes[0].plot(*zip(*pred, strict=True), "x", color=f"C{j}", ms=7, label=f"predicted, η = {lr:g}")
        axes[1].errorbar(x, [r["alpha"] for r in sel], yerr=[r["alpha_ci"] for r in sel], fmt="o-", ms=4,
                         capsize=2, color=f"C{j}", label=f"η = {lr:g}")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("gap 2/η − S (mean over the run)")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_ylabel("ᾱ = mean of −∇L_S·∇S")
    for ax in axes:
        ax.set_xlabel("keep p (1: GD)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"dropout at the edge of stability: mean and 95% interval over {cfg.seeds} seeds (runs that "
                 "diverged left out)", fontsize=9)
    return fig


def figure_sharpness(res: dict, cfg: Config):
    from .._plot import subplots

    fig, axes = subplots(1, len(cfg.lrs), figsize=(4.4 * len(cfg.lrs), 3.6), squeeze=False)
    for ax, lr in zip(axes[0], cfg.lrs, strict=True):
        for i, p in enumerate(cfg.keeps):
            key = f"p={p:g}/lr={lr:g}/seed=0"
            if len(res[f"{key}/step"]):
                ax.plot(res[f"{key}/step"], res[f"{key}/sharpness"], color="k" if p == 1 else f"C{i}", lw=1,
                        label="GD" if p == 1 else f"dropout p = {p:g}")
        ax.axhline(2 / lr, color="grey", ls="--", lw=0.8, label="2/η")
        ax.set_xlabel("step at η (after the ramp)")
        ax.set_ylabel("S = λ_max(∇²L_S)")
        ax.set_title(f"η = {lr:g} (seed {cfg.seed})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    rows = cells(res, cfg)
    table: dict = {k: [] for k in ("keep", "lr", "seed", "diverged_at_step", "measured_gap", "predicted_gap",
                                   "peak_S_over_edge", "balance_x2", *(f"mean_{k}" for k in MEANS))}
    traj: dict = {k: [] for k in ("keep", "lr", "seed", "step", *QUANTITIES)}
    for r in rows:
        for s, run in enumerate(r["runs"]):
            key = f"p={r['keep']:g}/lr={r['lr']:g}/seed={s}"
            diverged = int(res[f"{key}/diverged"])
            for name, val in (("keep", r["keep"]), ("lr", r["lr"]), ("seed", cfg.seed + s),
                              ("diverged_at_step", None if diverged == -1 else diverged),
                              ("measured_gap", run["measured"]), ("predicted_gap", run["predicted"]),
                              ("peak_S_over_edge", run["peak"]), ("balance_x2", run["balance"]),
                              *((f"mean_{k}", run[f"mean_{k}"]) for k in MEANS)):
                table[name].append(val)
            for j, k in enumerate(res[f"{key}/step"]):
                for name, val in (("keep", r["keep"]), ("lr", r["lr"]), ("seed", cfg.seed + s), ("step", int(k)),
                                  *((q, res[f"{key}/{q}"][j]) for q in QUANTITIES)):
                    traj[name].append(val)
    folder.write_csv("gaps.csv", table)
    folder.write_csv("trajectories.csv", traj)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    folder.savefig(figure_gap(rows, cfg), "gap")
    folder.savefig(figure_sharpness(res, cfg), "sharpness")
    fields = ("stable", "predictions", "measured", "measured_ci", "alpha", "alpha_ci", "peak", "peak_ci",
              "predicted", "predicted_ci", "sigma_u2", "sigma_u2_ci", "x2", "x2_ci", "balance", "balance_ci")
    return {"cells": {f"p={r['keep']:g}/lr={r['lr']:g}": {k: r[k] for k in fields} for r in rows},
            "seeds": cfg.seeds}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """GD at the edge, and the dropout gap against its prediction."""
    cells_ = {k: v for k, v in s["cells"].items() if v["stable"] >= 2}
    gd = {k: v for k, v in cells_.items() if k.startswith("p=1/")}
    dropout = {k: v for k, v in cells_.items() if not k.startswith("p=1/")}
    rows = []
    if gd:
        worst = max(gd, key=lambda k: abs(gd[k]["measured"]) * float(k.split("lr=")[1]) / 2)
        rel = abs(gd[worst]["measured"]) * float(worst.split("lr=")[1]) / 2
        rows.append(("GD sits at the edge of stability", "S = 2/η over the run (within 5% of 2/η)",
                     f"largest |2/η − S|·η/2 = {rel:.3g} ({worst}) over {len(gd)} η",
                     verdict(rel <= 0.05, "within 5% of 2/η in every η")))
    if dropout:
        peaks = {k: v["peak"] for k, v in dropout.items()}
        low = min(peaks, key=peaks.get)
        rows.append(("dropout reaches the edge", "S reaches 0.9·2/η in every (p, η) that did not diverge",
                     f"peak S·η/2 {min(peaks.values()):.2g}–{max(peaks.values()):.2g} over {len(dropout)} cells "
                     f"(lowest {low})", verdict(peaks[low] >= 0.9, "peak of the mean over seeds ≥ 0.9")))
        balance = {k: v["x2"] / v["balance"] for k, v in cells_.items() if v["balance"] and v["balance"] > 0}
        if balance:
            off = max(balance, key=lambda k: abs(np.log(balance[k])))
            rows.append(("the derivation's balance E x² = 2α/β (a stationary S)",
                         "the oscillation along u at the 2ᾱ/β̄ a stationary S needs (within a factor 2)",
                         f"E x² / (2ᾱ/β̄) {min(balance.values()):.2g}–{max(balance.values()):.2g} over {len(balance)} "
                         f"cells, GD and dropout (farthest {off})",
                         verdict(abs(np.log(balance[off])) <= np.log(2), "every cell within a factor 2")))
        predicted = {k: v for k, v in dropout.items() if v["predictions"] >= 2}
        agree = [k for k, v in predicted.items() if abs(v["measured"] - v["predicted"]) <= np.hypot(
            v["measured_ci"], v["predicted_ci"])]
        ratios = [v["measured"] / v["predicted"] for v in predicted.values() if v["predicted"] > 0]
        what = f"measured / predicted {min(ratios):.2g}–{max(ratios):.2g}" if ratios else "no positive prediction"
        rows.append(("dropout sharpness gap ΔS = ηβσ_u²/(4α)",
                     "measured gap = predicted within the 95% intervals, in every (p, η) that did not diverge",
                     f"{what} over {len(predicted)} of {len(dropout)} cells (ᾱ > 0 in at least two seeds); "
                     f"equal within the intervals in {len(agree)}",
                     verdict(len(agree) == len(dropout), "a cell without a prediction (ᾱ ≤ 0) counts as a miss")))
    else:
        rows.append(("dropout sharpness gap ΔS = ηβσ_u²/(4α)", "dropout runs that do not diverge",
                     "every dropout cell diverged", verdict(None, "nothing to compare")))
    return rows


EXPERIMENT = Experiment("sharpness-gap", "dropout at the edge of stability: does the sharpness of the expected "
                        "loss settle below 2/η by ηβσ_u²/(4α), σ_u² from the exact dropout noise covariance? "
                        "Measured against predicted over keep rates, steps and seeds.", Config, compute, write,
                        theory, order=57, smoke=dict(steps=20, every=10, warmup=5, seeds=2, keeps=(0.5, 1.0),
                                                     lrs=(0.3,), train_size=20, width=4, input_size=7,
                                                     iterations=4))
run = EXPERIMENT.run
