"""Figure 3 of the phase paper in the authors' own setting: MNIST digits 4 vs 7 at 28×28
(d = 784), pixels in [0, 1], labels ±1, the **logistic loss**, **SGD with batches of 64**
(B distinct samples a step, afresh each step), ReLU, width 4000, τ = 0.25 (the step τ·n),
drop rates 0.1 … 0.4, and five variants on shared batches and masks: no dropout, dropout,
RaM, forward-only and independent forward/backward masks ("for-back").

The data are ``dropdyn.data.raw_mnist_pair``: a random 20% of the two digits' images is the
test set and ``validation`` of the others are held out. By default the shipped 5,000-image
subset (about 1,000 images of 4 and 7) with 200 held out, 1000 steps and 2 repeats: the
setting (loss, batch, width, τ, rates, variants) at a size 2 CPU cores run in minutes.
``full`` is the paper's size: the full MNIST from local IDX files (``--source idx
--path``), 2,000 held out, 40,000 steps, 10 repeats.

Recorded every ``every`` steps: the full training, validation and test risk and accuracy of
each variant (test from the outputs on the test images); at the end, the RMS particle
distance between dropout and each other variant. With ``diagnostics_every``, the authors'
curvature diagnostics (``dropdyn.diagnostics``) on the same schedule. Writes
``metrics.csv``, ``diagnostics.csv`` (with ``diagnostics_every``), ``arrays.npz``,
``mnist.png`` (validation loss), ``distances.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import InputError
from ..data import raw_mnist_pair
from ..diagnostics import NAMES
from ..engine import record_steps, simulate
from ..lab import Context, Experiment, Runtime, setting, verdict
from ..lab.settings import at_least, each, positive, probability
from ..losses import LOSSES
from ..metrics import particle_distance
from ._runtime import activation_setting
from ._variants import diagnostics_table
from .mnist_binary import MnistPair

MASKED = ("dropout", "ram", "forward-only", "independent")
VARIANTS = ("gd", *MASKED)
COLORS = {"gd": "k", "dropout": "C3", "ram": "C0", "forward-only": "C1", "independent": "C2"}
LABELS = {"gd": "no dropout", "dropout": "dropout", "ram": "RaM", "forward-only": "forward-only",
          "independent": "independent masks"}
SETS = ("train", "val", "test")


@dataclass
class Config(MnistPair, Runtime):
    digits: tuple[int, int] = setting((4, 7), "two digits, e.g. 4,7")
    input_size: int = setting(28, "image side (28: the full resolution the paper uses)")
    validation: int = setting(200, "training images held out for validation (the paper: 2,000)", at_least(1))
    width: int = setting(4000, "width n", at_least(1))
    lr: float = setting(0.25, "learning rate τ (the step τ·n on the 1/n-scaled output)", positive())
    keeps: tuple[float, ...] = setting((0.9, 0.8, 0.7, 0.6), "keep rates q (drop rates 0.1 … 0.4)",
                                       each(probability()))
    batch_size: int = setting(64, "SGD batch size", at_least(1))
    steps: int = setting(1000, "SGD steps (the paper: 40,000)", at_least(1))
    repeats: int = setting(2, "independent starts, batch and mask streams (the paper: 10)", at_least(1))
    every: int = setting(100, "record every this many steps", at_least(1))
    diagnostics_every: int = setting(0, "curvature diagnostics every k steps (0: none)", at_least(0))
    full: bool = setting(False, "the paper's size: 2,000 held out, 40,000 steps, 10 repeats (needs --source idx)")
    activation: str = activation_setting("relu")
    dtype: str = setting("float32", "float32 (the authors' JAX default) or float64")

    def resolved(self) -> Config:
        if not self.full:
            return self
        if self.source != "idx":
            raise InputError("full is the paper's size on the full MNIST: give --source idx --path FOLDER")
        return replace(self, validation=2000, steps=40_000, repeats=10, full=False)


def compute(cfg: Config, ctx: Context) -> dict:
    """GD once (it draws no masks), the four masked variants at each keep rate; all on one
    batch stream, the masked ones on one mask stream per keep rate."""
    dtype = getattr(torch, cfg.dtype)
    split, val_x, val_y = raw_mnist_pair(cfg.digits, size=cfg.input_size, validation=cfg.validation,
                                         generator=torch.Generator().manual_seed(cfg.seed), source=cfg.source,
                                         path=cfg.path)
    d = split.inputs.shape[1]
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + cfg.width)
    X0 = torch.cat([torch.randn(cfg.repeats, cfg.width, 1, generator=g, dtype=torch.float64),
                    torch.randn(cfg.repeats, cfg.width, d, generator=g, dtype=torch.float64) / d**0.5], -1)
    steps = record_steps(cfg.steps, cfg.every)
    loss = LOSSES["logistic"]
    out: dict = {"steps": steps, "data": np.array([len(split.targets), len(val_y), len(split.test_targets)])}
    runs = [("gd", 1.0)] + [(v, q) for q in cfg.keeps for v in MASKED]
    bar = ctx.bar(len(runs) * cfg.steps, "paper-mnist")
    finals = {}
    for v, q in runs:
        key = v if v == "gd" else f"{v}/q={q:g}"
        bar.set_description(key)
        res = simulate(v, X0, split.inputs, split.targets, lr=cfg.lr, keep=q, steps=cfg.steps, loss="logistic",
                       activation=cfg.activation, batch_size=cfg.batch_size, seed=cfg.seed + 1, record_every=cfg.every,
                       test_inputs=val_x, test_targets=val_y, probe_inputs=split.test_inputs, device=cfg.device,
                       dtype=dtype, diagnostics_every=cfg.diagnostics_every or None, progress=bar)
        f_test = torch.from_numpy(res.on_grid("outputs", steps))  # (records, repeats, m_test)
        y_test = split.test_targets.to(f_test.dtype)
        series = {"train_risk": res.on_grid("risk", steps), "train_accuracy": res.on_grid("accuracy", steps),
                  "val_risk": res.on_grid("test_risk", steps), "val_accuracy": res.on_grid("test_accuracy", steps),
                  "test_risk": loss.risk(f_test, y_test).numpy(),
                  "test_accuracy": (torch.sign(f_test) == y_test).double().mean(-1).numpy()}
        for name, values in series.items():
            out[f"{key}/{name}"] = values
        out[f"{key}/diverged_at_step"] = res.diverged_at_step
        finals[key] = res.particles
        if res.diagnostics is not None:
            out[f"{key}/diagnostic_steps"] = res.diagnostic_steps.numpy()
            for name in NAMES:
                out[f"{key}/{name}"] = res.diagnostics[name].numpy()
    bar.close()
    for q in cfg.keeps:
        drop = finals[f"dropout/q={q:g}"]
        for v in ("gd", "ram", "forward-only", "independent"):
            other = finals["gd" if v == "gd" else f"{v}/q={q:g}"]
            out[f"distance/q={q:g}/{v}"] = particle_distance(drop, other).sqrt().numpy()  # (repeats,)
    return out


def figures(res: dict, cfg: Config):
    """The validation risk of each variant at each drop rate (after the first record, where
    every run starts at log 2); the RMS particle distance to dropout at the last step."""
    from .._plot import subplots

    k, later = res["steps"], res["steps"] > 0
    fig1, axes = subplots(1, len(cfg.keeps), figsize=(3.6 * len(cfg.keeps), 3.4), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], cfg.keeps, strict=True):
        for v in VARIANTS:
            key = v if v == "gd" else f"{v}/q={q:g}"
            ax.plot(k[later], np.nanmean(res[f"{key}/val_risk"], -1)[later], color=COLORS[v], label=LABELS[v])
        ax.set_title(f"drop rate {1 - q:.1f}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation logistic loss")
    axes[0, 0].legend(fontsize=7)
    fig1.suptitle(f"MNIST {cfg.digits[0]} vs {cfg.digits[1]}, logistic loss, batch {cfg.batch_size}, width "
                  f"{cfg.width}, τ = {cfg.lr:g}; mean of {cfg.repeats} repeat(s)", fontsize=10)
    fig2, ax = subplots(figsize=(6, 3.8))
    rates = [1 - q for q in cfg.keeps]
    for v in ("gd", "ram", "forward-only", "independent"):
        ax.plot(rates, [np.mean(res[f"distance/q={q:g}/{v}"]) for q in cfg.keeps], "o-", color=COLORS[v],
                label=f"dropout vs {LABELS[v]}")
    ax.set_xlabel("drop rate 1 − q")
    ax.set_ylabel(f"RMS particle distance at step {cfg.steps}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig1, fig2


def write(folder, cfg: Config, res: dict) -> dict:
    keys = ["gd"] + [f"{v}/q={q:g}" for q in cfg.keeps for v in MASKED]
    names = [f"{s}_{m}" for s in SETS for m in ("risk", "accuracy")]
    diagnosed = diagnostics_table(res)
    if diagnosed:
        folder.write_csv("diagnostics.csv", diagnosed)
    folder.write_csv("metrics.csv", {"step": res["steps"], **{f"{key}/{name}": np.nanmean(res[f"{key}/{name}"], -1)
                                                            for key in keys for name in names}})
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray)})
    for fig, name in zip(figures(res, cfg), ("mnist", "distances"), strict=True):
        folder.savefig(fig, name)
    final = {key: {name: float(np.nanmean(res[f"{key}/{name}"][-1])) for name in ("val_risk", "test_risk",
                                                                                   "test_accuracy")}
             for key in keys}
    return {
        "data": {"train": int(res["data"][0]), "validation": int(res["data"][1]), "test": int(res["data"][2]),
                 "source": cfg.source},
        "repeats": cfg.repeats, "final": final,
        "final_distance_to_dropout": {f"q={q:g}": {v: float(np.mean(res[f"distance/q={q:g}/{v}"]))
                                                   for v in ("gd", "ram", "forward-only", "independent")}
                                      for q in cfg.keeps},
        "diverged_at_step": {key: res[f"{key}/diverged_at_step"] for key in keys},
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """At every keep rate: dropout's particles nearer RaM's than GD's at the last step."""
    rows = []
    for q, d in s["final_distance_to_dropout"].items():
        rows.append((f"dropout tracks RaM ({q})", "‖dropout − RaM‖ < ‖dropout − GD‖",
                     f"{d['ram']:.3g} vs {d['gd']:.3g} ({s['repeats']} repeat(s))",
                     verdict(d["ram"] < d["gd"], "RMS particle distances at the last step")))
    return rows


EXPERIMENT = Experiment(
    "paper-mnist", "Figure 3 of the phase paper in its own setting: MNIST 4 vs 7, logistic loss, SGD batches of 64, "
    "five variants at four drop rates.", Config, compute, write, theory, order=11,
    smoke=dict(width=30, steps=20, every=10, keeps=(0.8,), validation=50, batch_size=16, repeats=2,
               diagnostics_every=10))
run = EXPERIMENT.run
