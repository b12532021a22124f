"""Generalisation of dropout, its SME and GD on L_S, Figure 2 of the SME paper (docs/theory.md §3).

Two settings, (η, p) = (0.005, 0.9) and (0.1, 0.3) — the paper's large step is η = 1,
but in this scaling (inputs with ‖x‖² ≈ d, width 50) the top eigenvalue of ∇²L_S is ≈ 8,
so GD on L_S is unstable above η ≈ 0.25 and at η = 1 all three dynamics diverge (as does
dropout at η = 0.2, p = 0.3); η = 0.1 is the large step here. R replicas of dropout and of the
order-1 SME, and GD on the modified loss L_S (deterministic), from one θ_0. Figure:
test risk and test accuracy over time t = kη (replica mean, min–max band). The paper's
claims: at small η all three agree; at large η the SME follows dropout and GD on L_S
does not, generalising worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lab import Context, Experiment, verdict
from ..lab.settings import Pairs
from ._runtime import pairs_setting
from ._sme import CurveSettings, band, compute_curves, curve_table

DYNAMICS = ("dropout", "sme1", "gd")
STYLE = {"dropout": ("C0", "-", "dropout"), "sme1": ("C3", "--", "SME (order 1)"), "gd": ("k", ":", "GD on L_S")}


@dataclass
class Config(CurveSettings):
    settings: Pairs = pairs_setting(((0.005, 0.9), (0.1, 0.3)), "(η, p) settings")


def compute(cfg: Config, ctx: Context) -> dict:
    return compute_curves(cfg, DYNAMICS, ctx)


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    fig, axes = subplots(len(res), 2, figsize=(10, 3.4 * len(res)), squeeze=False)
    for row, ((lr, p), r) in enumerate(res.items()):
        for col, key in enumerate(("test_risk", "test_accuracy")):
            for dyn in DYNAMICS:
                color, ls, label = STYLE[dyn]
                band(axes[row, col], r[dyn], key, color, label, ls=ls)
            axes[row, col].set_ylabel(key.replace("_", " "))
            axes[row, col].set_xlabel("time t = kη")
            axes[row, col].grid(alpha=0.3)
        axes[row, 0].set_title(f"η = {lr:g}, p = {p:g}", fontsize=10)
    axes[0, 1].legend(fontsize=8)
    fig.suptitle(f"test risk and accuracy: mean and min–max over {cfg.replicas} replicas, width {cfg.width}, "
                 f"{cfg.input_size}×{cfg.input_size} MNIST {cfg.digits_title()}", fontsize=9)
    fig.tight_layout()
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    settings = {}
    for (lr, p), r in res.items():
        tag = f"lr={lr:g},p={p:g}"
        keys = [f"{k}_{s}" for k in ("test_risk", "test_accuracy") for s in ("mean", "min", "max")]
        folder.write_csv(f"test_{tag}.csv", curve_table(r, {k: k for k in keys}))
        settings[tag] = {
            dyn: {"final_test_risk": float(r[dyn]["test_risk_mean"][-1]),
                  "final_test_accuracy": float(r[dyn]["test_accuracy_mean"][-1]),
                  "mean_test_accuracy": float(np.mean(r[dyn]["test_accuracy_mean"])),
                  "diverged_at_step": r[dyn]["diverged_at_step"]} for dyn in DYNAMICS}
    folder.savefig(figure(res, cfg), "sme_generalisation")
    return {"settings": settings}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for k, v in s["settings"].items():
        acc = {d: v[d]["mean_test_accuracy"] for d in DYNAMICS}
        sme, gd = abs(acc["sme1"] - acc["dropout"]), abs(acc["gd"] - acc["dropout"])
        rows.append((f"test accuracy, {k}", "SME tracks dropout; GD on L_S differs at large η (SME paper, Fig. 2)",
                     ", ".join(f"{d} {a:.3f}" for d, a in acc.items()),
                     verdict(sme <= gd, f"the SME's mean accuracy is as close to dropout's as GD's: {sme:.3f} vs "
                                        f"{gd:.3f}")))
    return rows


EXPERIMENT = Experiment("sme-generalisation", "Figure 2 of the SME paper: test risk/accuracy of dropout, SME and GD "
                        "on L_S.", Config, compute, write, theory, order=72,
                        smoke=dict(width=6, train_size=60, replicas=4, settings=((0.05, 0.9),), time=0.5, records=5))
run = EXPERIMENT.run
