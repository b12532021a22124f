"""Figure 2 of the phase paper in the authors' own setting: d = 20, 500 training and 500
validation points z ~ N(0, I), a ReLU teacher of 15 neurons (``dropdyn.data.relu_teacher``),
no label noise; a ReLU student w ~ N(0, I/d), a ~ N(0, 1); squared loss; τ = 0.5 (the step
0.5·n on the 1/n-scaled output), q = 0.7; widths 200 … 5000; 1000 full-batch steps.

At each width, ``repeats`` independent starts (and mask streams) run GD, dropout, RaM and
the independent variant ("PN + RaM") coupled on one mask stream. Recorded every
steps/records steps: train and validation risk of each variant and the RMS distance
√((1/n) Σ_i ‖x_i − x'_i‖²) between dropout and each other variant; with
``diagnostics_every``, the authors' curvature diagnostics (``dropdyn.diagnostics``) of every
variant at the largest width. Penalty GD runs beside them, and its distance to GD is the
penalty's own effect on the trajectory. The claims it tests: dropout tracks RaM (its
distance to RaM is below its distance to GD), that distance shrinks with the width (the
fitted slope of the final distance over widths, with its 95% interval), and the penalty is
negligible at this τ (penalty GD's distance to GD is below a tenth of dropout's to RaM).

Writes ``metrics.csv`` (per width, record and variant: means and standard errors over
repeats; ``distance`` is to dropout, penalty GD's to GD), ``diagnostics.csv``, ``arrays.npz``
(every repeat), ``losses.png``, ``distances.png``, ``scaling.png``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import mean_field_init, relu_teacher
from ..diagnostics import NAMES
from ..engine import record_steps, simulate
from ..lab import Context, Experiment, Runtime, setting, sign_verdict, verdict
from ..lab.settings import at_least, positive, probability
from ..metrics import particle_distance
from ._runtime import activation_setting, widths_setting
from ._variants import diagnostics_table
from .convergence import fit_rate

VARIANTS = ("gd", "dropout", "ram", "independent", "penalty")
OTHERS = ("gd", "ram", "independent")  # each one's distance to dropout
COLORS = {"gd": "k", "dropout": "C3", "ram": "C0", "independent": "C2", "penalty": "C1"}
LABELS = {"gd": "no dropout", "dropout": "dropout", "ram": "RaM", "independent": "PN + RaM (independent masks)",
          "penalty": "penalty GD"}


@dataclass
class Config(Runtime):
    dim: int = setting(20, "input dimension d", at_least(1))
    teacher_width: int = setting(15, "ReLU neurons of the teacher", at_least(1))
    n_train: int = setting(500, "training points", at_least(1))
    n_val: int = setting(500, "validation points", at_least(1))
    widths: tuple[int, ...] = widths_setting((200, 500, 1000, 2000, 5000), "student widths n")
    lr: float = setting(0.5, "learning rate τ (the step τ·n on the 1/n-scaled output)", positive())
    keep: float = setting(0.7, "keep rate q (drop rate 1 − q = 0.3)", probability())
    steps: int = setting(1000, "full-batch steps", at_least(1))
    repeats: int = setting(3, "independent starts and mask streams per width (the paper: 10)", at_least(2))
    records: int = setting(50, "records over the run", at_least(1))
    diagnostics_every: int = setting(0, "curvature diagnostics every k steps at the largest width (0: none)",
                                     at_least(0))
    activation: str = activation_setting("relu")


def compute(cfg: Config, ctx: Context) -> dict:
    """Every width: the four variants from one start per repeat, on one mask stream."""
    dtype = getattr(torch, cfg.dtype)
    task = relu_teacher(dim=cfg.dim, teacher_width=cfg.teacher_width, n_train=cfg.n_train, n_test=cfg.n_val,
                        generator=torch.Generator().manual_seed(cfg.seed))
    every = max(1, cfg.steps // cfg.records)
    steps = record_steps(cfg.steps, every)
    widths = sorted(cfg.widths)
    out: dict = {"steps": steps, "widths": np.array(widths)}
    bar = ctx.bar(len(widths) * len(VARIANTS) * cfg.steps, "paper-teacher-student")
    for n in widths:
        X0 = mean_field_init(n, cfg.dim, replicas=cfg.repeats,
                             generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + n))
        diagnose = cfg.diagnostics_every if cfg.diagnostics_every and n == widths[-1] else None
        snaps = {}
        for v in ("dropout", *OTHERS, "penalty"):
            bar.set_description(f"n={n}, {v}")
            res = simulate(v, X0, task.inputs, task.targets, lr=cfg.lr, keep=cfg.keep, steps=cfg.steps,
                           activation=cfg.activation, seed=cfg.seed + 1, record_every=every, snapshot_every=every,
                           test_inputs=task.test_inputs, test_targets=task.test_targets, device=cfg.device,
                           dtype=dtype, diagnostics_every=diagnose, progress=bar)
            out[f"{n}/{v}/train_risk"] = res.on_grid("risk", steps)  # (records, repeats)
            out[f"{n}/{v}/val_risk"] = res.on_grid("test_risk", steps)
            out[f"{n}/{v}/diverged_at_step"] = res.diverged_at_step
            snap = torch.from_numpy(res.on_grid("snapshots", steps))
            if v in ("dropout", "gd"):
                snaps[v] = snap
            reference = "gd" if v == "penalty" else "dropout"
            if v != "dropout":  # penalty GD: its distance to GD; the others: to dropout
                out[f"{n}/{v}/distance"] = particle_distance(snaps[reference], snap).sqrt().numpy()
            if res.diagnostics is not None:
                out[f"{n}/{v}/diagnostic_steps"] = res.diagnostic_steps.numpy()
                for name in NAMES:
                    out[f"{n}/{v}/{name}"] = res.diagnostics[name].numpy()
    bar.close()
    return out


def _mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last (repeat) axis."""
    return np.mean(x, -1), np.std(x, -1, ddof=1) / np.sqrt(x.shape[-1])


def rates(res: dict, cfg: Config) -> dict:
    """Each final distance (to dropout; penalty GD's to GD) against the width: its mean over
    repeats per width and the fitted log–log slope with its 95% interval."""
    widths = [int(n) for n in res["widths"]]
    out = {}
    for v in (*OTHERS, "penalty"):
        final = [float(np.mean(res[f"{n}/{v}/distance"][-1])) for n in widths]
        out[v] = {"final": final, **fit_rate(widths, final)}
    return out


def figures(res: dict, cfg: Config, fits: dict):
    from .._plot import subplots

    widths, k = [int(n) for n in res["widths"]], res["steps"]
    n_max = widths[-1]
    fig1, axes = subplots(1, 2, figsize=(10, 3.8))
    for ax, which in zip(axes, ("train", "val"), strict=True):
        for v in VARIANTS:
            mean, se = _mean_se(res[f"{n_max}/{v}/{which}_risk"])
            ax.plot(k, mean, color=COLORS[v], label=LABELS[v])
            ax.fill_between(k, mean - se, mean + se, color=COLORS[v], alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{'training' if which == 'train' else 'validation'} loss, n = {n_max}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig1.suptitle(f"phase paper, Figure 2 setting: τ = {cfg.lr:g}, q = {cfg.keep:g}, {cfg.repeats} repeats "
                  "(bands: ± one standard error)", fontsize=10)

    fig2, axes = subplots(1, len(OTHERS), figsize=(13, 3.8), sharey=True)
    for ax, v in zip(axes, OTHERS, strict=True):
        for i, n in enumerate(widths):
            mean, se = _mean_se(res[f"{n}/{v}/distance"])
            color = f"C{i}"
            ax.plot(k, mean, color=color, label=f"n = {n}")
            ax.fill_between(k, mean - se, mean + se, color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"dropout vs {LABELS[v]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RMS particle distance")
    axes[0].legend(fontsize=8)

    fig3, ax = subplots(figsize=(6, 4))
    for v, f in fits.items():
        ax.loglog(widths, f["final"], "o", color=COLORS[v])
        if np.isfinite(f["slope"]):
            pair = "penalty GD vs GD" if v == "penalty" else f"dropout vs {LABELS[v]}"
            ax.loglog(widths, np.exp(f["intercept"]) * np.asarray(widths, float) ** f["slope"], "-",
                      color=COLORS[v], label=f"{pair}: n^{f['slope']:.2f}")
    ax.set_xticks(widths, [str(n) for n in widths])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("width n")
    ax.set_ylabel(f"RMS particle distance at step {cfg.steps}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig1, fig2, fig3


def write(folder, cfg: Config, res: dict) -> dict:
    widths = [int(n) for n in res["widths"]]
    rows = {"width": [], "step": [], "variant": [], "train_risk": [], "train_risk_se": [], "val_risk": [],
            "val_risk_se": [], "distance": [], "distance_se": []}
    for n in widths:
        for v in VARIANTS:
            tr, tr_se = _mean_se(res[f"{n}/{v}/train_risk"])
            va, va_se = _mean_se(res[f"{n}/{v}/val_risk"])
            dist, dist_se = _mean_se(res[f"{n}/{v}/distance"]) if v != "dropout" else (np.zeros_like(tr),) * 2
            for j, k in enumerate(res["steps"]):
                for key, val in (("width", n), ("step", int(k)), ("variant", v), ("train_risk", tr[j]),
                                 ("train_risk_se", tr_se[j]), ("val_risk", va[j]), ("val_risk_se", va_se[j]),
                                 ("distance", dist[j]), ("distance_se", dist_se[j])):
                    rows[key].append(val)
    folder.write_csv("metrics.csv", rows)
    diagnosed = diagnostics_table(res)
    if diagnosed:
        folder.write_csv("diagnostics.csv", diagnosed)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    fits = rates(res, cfg)
    for fig, name in zip(figures(res, cfg, fits), ("losses", "distances", "scaling"), strict=True):
        folder.savefig(fig, name)
    n_max = widths[-1]
    final = {v: float(np.mean(res[f"{n_max}/{v}/distance"][-1])) for v in OTHERS}
    penalty = float(np.mean(res[f"{n_max}/penalty/distance"][-1]))
    return {
        "repeats": cfg.repeats, "largest_width": n_max,
        "final_distance_to_dropout_at_largest_width": final,
        "final_distance_penalty_gd_to_gd_at_largest_width": penalty,
        "final_val_risk_at_largest_width": {v: float(np.mean(res[f"{n_max}/{v}/val_risk"][-1])) for v in VARIANTS},
        "distance_rates": {v: {k: f[k] for k in ("slope", "ci95", "points")} for v, f in fits.items()},
        "diverged_at_step": {f"{n}/{v}": res[f"{n}/{v}/diverged_at_step"] for n in widths for v in VARIANTS},
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """The paper's three claims, each against its measurement."""
    d, r = s["final_distance_to_dropout_at_largest_width"], s["distance_rates"]["ram"]
    ci = r["ci95"]
    return [
        ("dropout tracks RaM", "‖dropout − RaM‖ < ‖dropout − GD‖",
         f"{d['ram']:.3g} vs {d['gd']:.3g} at n = {s['largest_width']} ({s['repeats']} repeats)",
         verdict(d["ram"] < d["gd"], "nearer RaM than GD at the largest width")),
        ("the dropout–RaM distance shrinks with n", "slope < 0",
         f"n^{r['slope']:.2f}" + (f", 95% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""),
         sign_verdict(r)),
        ("the penalty is negligible at this τ", "‖penalty GD − GD‖ ≪ ‖dropout − RaM‖",
         f"{s['final_distance_penalty_gd_to_gd_at_largest_width']:.3g} vs {d['ram']:.3g}",
         verdict(s["final_distance_penalty_gd_to_gd_at_largest_width"] < 0.1 * d["ram"],
                 "the penalty's own effect below a tenth of the forward noise's")),
    ]


EXPERIMENT = Experiment(
    "paper-teacher-student", "Figure 2 of the phase paper in its own setting: ReLU teacher–student, widths 200–5000, "
    "GD, dropout, RaM, independent masks and penalty GD over repeats; RMS distances and their width scaling.",
    Config, compute, write, theory, order=1,
    smoke=dict(widths=(30, 60), steps=20, records=4, repeats=2, n_train=40, n_val=40, diagnostics_every=10))
run = EXPERIMENT.run
