"""Dropout against its SME, Figure 1(a) of the SME paper (docs/theory.md §3).

For four (η, p) settings: R replicas of dropout and of the order-1 SME (Euler–Maruyama,
``substeps`` sub-steps per dropout step, exact matrix-free diffusion) from one θ_0 on
two MNIST digits pooled to 7×7 (``--input-size 28``: full resolution). Figure: training
risk R_S over time t = kη, replica mean and median with the min–max band, dropout vs SME.
The mean of a few replicas follows its largest one: the SME's Gaussian diffusion is
unbounded and dropout's noise is not, so the summary gives the gap of the medians and each
dynamics' largest replica risk beside the gap of the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import Pairs
from ._runtime import pairs_setting
from ._sme import CurveSettings, band, compute_curves, curve_table

DYNAMICS = ("dropout", "sme1")


@dataclass
class Config(CurveSettings):
    settings: Pairs = pairs_setting(((0.05, 0.9), (0.05, 0.5), (0.2, 0.9), (0.2, 0.5)), "(η, p) settings")
    replicas: int = setting(16, "replicas of each stochastic dynamics")
    substeps: int = setting(4, "Euler–Maruyama sub-steps per dropout step")


def compute(cfg: Config, ctx: Context) -> dict:
    return compute_curves(cfg, DYNAMICS, ctx)


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    n = len(res)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, ((lr, p), r) in zip(axes.flat[:len(res)], res.items(), strict=True):
        band(ax, r["dropout"], "train_risk", "C0", "dropout", median=True)
        band(ax, r["sme1"], "train_risk", "C3", "SME (order 1)", ls="--", median=True)
        ax.set_title(f"η = {lr:g}, p = {p:g}", fontsize=10)
        ax.set_xlabel("time t = kη")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("training risk R_S")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"dropout vs SME: mean, median and min–max over {cfg.replicas} replicas, width {cfg.width}, "
                 f"{cfg.input_size}×{cfg.input_size} MNIST {cfg.digits_title()}", fontsize=9)
    fig.tight_layout()
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    settings = {}
    for (lr, p), r in res.items():
        tag = f"lr={lr:g},p={p:g}"
        folder.write_csv(f"risk_{tag}.csv", curve_table(r, {s: f"train_risk_{s}"
                                                            for s in ("mean", "median", "min", "max")}))
        settings[tag] = {
            **{f"{name}_{stat}": value for stat in ("mean", "median") for name, value in gaps(r, stat).items()},
            "largest_risk_dropout": float(np.max(r["dropout"]["train_risk_max"][1:])),  # after t = 0
            "largest_risk_sme": float(np.max(r["sme1"]["train_risk_max"][1:])),
            "diverged_at_step": {dyn: r[dyn]["diverged_at_step"] for dyn in DYNAMICS}}
    folder.savefig(figure(res, cfg), "sme_trajectories")
    return {"settings": settings}


def gaps(r: dict, stat: str) -> dict:
    """Final training risks of dropout and the SME by ``stat`` (mean or median over replicas)
    and the largest relative gap between the two curves, |d − s|/d over the common records."""
    d, s = r["dropout"][f"train_risk_{stat}"], r["sme1"][f"train_risk_{stat}"]
    k = min(len(d), len(s))
    return {"final_risk_dropout": float(d[k - 1]), "final_risk_sme": float(s[k - 1]),
            "max_relative_gap": float(np.max(np.abs(d[:k] - s[:k]) / d[:k]))}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    return [(f"dropout vs SME training risk, {k}", "agree (SME paper, Fig. 1a)",
             f"largest relative gap of the means {v['max_relative_gap_mean']:.1%}, of the medians "
             f"{v['max_relative_gap_median']:.1%}; largest replica risk after t = 0: "
             f"{v['largest_risk_dropout']:.3g} (dropout), {v['largest_risk_sme']:.3g} (SME)",
             verdict(v["max_relative_gap_median"] <= 0.1, "the medians within 10% of each other at every record"))
            for k, v in s["settings"].items()]


EXPERIMENT = Experiment("sme-trajectories", "Figure 1(a) of the SME paper: training risk of dropout vs its order-1 "
                        "SME.", Config, compute, write, theory, order=70,
                        smoke=dict(width=6, train_size=60, replicas=4, settings=((0.1, 0.9), (0.2, 0.5)), time=1.0,
                                   records=5))
run = EXPERIMENT.run
