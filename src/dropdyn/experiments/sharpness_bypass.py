"""The sharpness-bypass assumption measured along training (docs/theory.md §2): the phase
paper's mechanism needs the interaction term B (the Gauss–Newton form,
‖(1/n) Σ_i Dφ_i ∇V_i‖² for the squared loss) to dominate each neuron's own curvature
C = (1/n) Σ_i ∇V_iᵀ ∇²V_i ∇V_i. Three settings, each at several widths and keep rates:

    teacher-student   the mean-field teacher–student task, squared loss, RaM and GD
    mnist-squared     the phase paper's MNIST task (two digits, raw pixels, pooled to
    mnist-logistic    ``input_size``², ``mnist_train`` images), ReLU, full batch, RaM and GD
                      with the squared and the logistic loss
    dropout-mlp       a ``nets.DropoutMLP`` with one hidden layer of that width (standard
                      parametrisation) on the same images, trained by SGD on the
                      cross-entropy with dropout on its hidden units at each keep rate
                      (and without); A, B, C of the network without dropout
                      (``curvature.module_bypass_terms``: B the Gauss–Newton part, C the rest)

recorded every steps/records steps and measured on each recorded state
(``curvature.bypass_terms``, matrix-free).

Writes ``metrics.csv`` (one row per setting, width, run and record: A, B, C, B/|C|),
``arrays.npz`` and ``bypass.png`` (B/|C| over training: a row per setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..curvature import bypass_terms, module_bypass_terms
from ..data import mean_field_init, raw_mnist_pair
from ..engine import simulate
from ..lab import Context, Experiment, Runtime, setting, verdict
from ..lab.settings import at_least, each, one_of, positive, probability
from ..nets import DropoutMLP, train
from ._runtime import widths_setting
from .mnist_binary import MnistPair
from .teacher_student import Task

TERMS = ("A", "B", "C")
TASKS = ("teacher-student", "mnist-squared", "mnist-logistic", "dropout-mlp")


@dataclass
class Config(Task, MnistPair, Runtime):
    dim: int = setting(5, "input dimension d")
    n_train: int = setting(50, "training samples")
    n_test: int = setting(10, "held-out samples (unused here)")
    label_noise: float = setting(0.0, "standard deviation of the label noise")
    tasks: tuple[str, ...] = setting(TASKS, "settings measured", each(one_of(*TASKS)))
    widths: tuple[int, ...] = widths_setting((100, 400, 1600), "widths n")
    keeps: tuple[float, ...] = setting((0.5, 0.2), "RaM (and the MLP's dropout) keep rates q", each(probability()))
    lr: float = setting(1.0, "mean step τ (teacher–student)", positive())
    steps: int = setting(1000, "steps per run", at_least(1))
    records: int = setting(20, "records (and measurements of A, B, C) over the run", at_least(1))
    digits: tuple[int, int] = setting((4, 7), "the two MNIST digits (the phase paper's)")
    mnist_train: int = setting(500, "MNIST training images", at_least(2))
    mnist_lr: float = setting(0.25, "mean step τ on MNIST, logistic loss (the phase paper's)", positive())
    mnist_squared_lr: float = setting(0.1, "mean step τ on MNIST, squared loss (at 0.25 RaM diverges)", positive())
    mlp_lr: float = setting(0.05, "the DropoutMLP's SGD learning rate", positive())
    mlp_batch: int = setting(50, "the DropoutMLP's minibatch size", at_least(1))


def runs(cfg: Config) -> list[tuple[str, str, float]]:
    """(name, variant, keep) of each run at a width: GD, then RaM (dropout, for the MLP) at
    each keep rate."""
    return [("gd", "gd", 1.0)] + [(f"ram q={q:g}", "ram", q) for q in cfg.keeps]


def mnist(cfg: Config):
    """The MNIST pair's training images ``(mnist_train, input_size²)`` (pixels in [0, 1]) and ±1 targets."""
    split, _, _ = raw_mnist_pair(cfg.digits, size=cfg.input_size, validation=0,
                                 generator=torch.Generator().manual_seed(cfg.seed), source=cfg.source, path=cfg.path)
    dtype = getattr(torch, cfg.dtype)
    return split.inputs[:cfg.mnist_train].to(cfg.device, dtype), split.targets[:cfg.mnist_train].to(cfg.device, dtype)


def particle_runs(cfg: Config, task: str, n: int, bar) -> dict:
    """A, B, C along GD and RaM on a particle system: the teacher–student task or MNIST."""
    if task == "teacher-student":
        data = cfg.task(torch.Generator().manual_seed(cfg.seed))
        Z, y, lr, act, loss = data.inputs, data.targets, cfg.lr, cfg.activation, "squared"
        X0 = mean_field_init(n, cfg.dim, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + n))
    else:
        Z, y = mnist(cfg)
        loss = task.split("-")[1]
        lr, act = (cfg.mnist_lr if loss == "logistic" else cfg.mnist_squared_lr), "relu"
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + n)
        d = Z.shape[1]
        X0 = torch.cat([torch.randn(n, 1, generator=g, dtype=torch.float64),
                        torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5], -1)
    every = max(1, cfg.steps // cfg.records)
    out = {}
    for name, variant, q in runs(cfg):
        res = simulate(variant, X0, Z, y, lr=lr, keep=q, steps=cfg.steps, activation=act, loss=loss,
                       seed=cfg.seed + 1, record_every=every, snapshot_every=every, device=cfg.device,
                       dtype=getattr(torch, cfg.dtype), progress=bar)
        terms = [bypass_terms(X.to(Z), Z, y, act, loss) for X in res.snapshots]
        out[name] = ({t: np.array([x[t] for x in terms]) for t in TERMS}, res.diverged_at_step)
    return out


def mlp_runs(cfg: Config, n: int, bar) -> dict:
    """A, B, C along SGD training of a one-hidden-layer DropoutMLP of width n on MNIST,
    without dropout and with dropout on the hidden units at each keep rate; measured on
    the network without dropout (eval mode) over the training images."""
    Z, y = mnist(cfg)
    labels = (y > 0).long()
    batches = -(-len(labels) // cfg.mlp_batch)
    epochs = max(1, cfg.steps // batches)
    every = max(1, epochs * batches // cfg.records)
    out = {}
    for name, _, q in runs(cfg):
        torch.manual_seed(cfg.seed * 1_000_003 + n)
        net = DropoutMLP([Z.shape[1], n, 2], keep_hidden=q, activation="relu").to(cfg.device, Z.dtype)
        measured: list = []

        def measure(step: int, net=net, measured=measured) -> None:
            if step % every == 0:
                was = net.training
                net.eval()
                measured.append(module_bypass_terms(net, torch.nn.functional.cross_entropy, Z, labels))
                net.train(was)
            if 0 < step <= cfg.steps:
                bar.update(1)

        measure(0)
        diverged = train(net, Z, labels, epochs=epochs, lr=cfg.mlp_lr, momentum=0.0, decay=1.0,
                         batch_size=cfg.mlp_batch, generator=torch.Generator().manual_seed(cfg.seed + 1),
                         on_step=measure)
        bar.update(max(0, cfg.steps - (diverged - 1 if diverged else epochs * batches)))
        out[name] = ({t: np.array([x[t] for x in measured]) for t in TERMS}, diverged)
    return out


def compute(cfg: Config, ctx: Context) -> dict:
    out: dict = {"widths": np.array(sorted(cfg.widths)), "tasks": np.array(cfg.tasks)}
    bar = ctx.bar(len(cfg.tasks) * len(cfg.widths) * len(runs(cfg)) * cfg.steps, "sharpness-bypass")
    for task in cfg.tasks:
        for n in sorted(cfg.widths):
            measured = mlp_runs(cfg, n, bar) if task == "dropout-mlp" else particle_runs(cfg, task, n, bar)
            for name, (terms, diverged) in measured.items():
                for t in TERMS:
                    out[f"{task}/{n}/{name}/{t}"] = terms[t]
                out[f"{task}/{n}/{name}/diverged_at_step"] = diverged
    bar.close()
    return out


def label(task: str, name: str) -> str:
    return name.replace("ram", "dropout") if task == "dropout-mlp" else name


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    tasks, widths = list(res["tasks"]), res["widths"]
    fig, axes = subplots(len(tasks), len(widths), figsize=(4.0 * len(widths), 2.9 * len(tasks)), squeeze=False,
                         sharey="row")
    for row, task in zip(axes, tasks, strict=True):
        for ax, n in zip(row, widths, strict=True):
            for i, (name, _, _) in enumerate(runs(cfg)):
                ratio = res[f"{task}/{n}/{name}/B"] / np.abs(res[f"{task}/{n}/{name}/C"])
                ax.plot(np.arange(len(ratio)), ratio, "o-", color="k" if name == "gd" else f"C{i}",
                        label=label(task, name), ms=3)
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.axhline(10.0, color="grey", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.set_title(f"{task}, n = {n}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("B / |C|")
        row[0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(f"record (every steps/{cfg.records})")
    fig.suptitle("the bypass assumption B ≫ |C| along training", fontsize=10)
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    rows: dict = {"task": [], "width": [], "run": [], "record": [], **{t: [] for t in TERMS}, "B_over_absC": []}
    ratios = {}
    for task in res["tasks"]:
        for n in res["widths"]:
            for name, _, _ in runs(cfg):
                A, B, C = (res[f"{task}/{n}/{name}/{t}"] for t in TERMS)
                ratio = B / np.abs(C)
                ratios[f"{task}/{n}/{label(task, name)}"] = ratio
                for j in range(len(A)):
                    for key, val in (("task", task), ("width", int(n)), ("run", label(task, name)), ("record", j),
                                     ("A", A[j]), ("B", B[j]), ("C", C[j]), ("B_over_absC", ratio[j])):
                        rows[key].append(val)
    folder.write_csv("metrics.csv", rows)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if isinstance(v, np.ndarray) and v.dtype != object
                                    and k != "tasks"})
    folder.savefig(figure(res, cfg), "bypass")
    return {"min_B_over_absC": {k: float(np.nanmin(v)) for k, v in ratios.items()},
            "median_B_over_absC": {k: float(np.nanmedian(v)) for k, v in ratios.items()},
            "diverged_at_step": {f"{t}/{n}/{label(t, name)}": res[f"{t}/{n}/{name}/diverged_at_step"]
                                 for t in res["tasks"] for n in res["widths"] for name, _, _ in runs(cfg)}}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """The assumption in each setting, over its RaM (dropout) runs' records: B at least 10 times |C|."""
    rows = []
    for task in TASKS:
        mine = {k: v for k, v in s["min_B_over_absC"].items() if k.startswith(f"{task}/") and not k.endswith("/gd")}
        if not mine:
            continue
        worst = min(mine, key=mine.get)
        med = [s["median_B_over_absC"][k] for k in mine]
        rows.append((f"the bypass assumption B ≫ |C| ({task})", "B / |C| ≥ 10 at every record",
                     f"smallest B / |C| = {mine[worst]:.3g} ({worst}); median over a run {min(med):.3g}–{max(med):.3g}",
                     verdict(mine[worst] >= 10, "B at least 10 × |C| at every record of every masked run")))
    return rows


EXPERIMENT = Experiment("sharpness-bypass", "the phase paper's bypass assumption B ≫ |C| measured along training "
                        "(teacher–student and MNIST particle systems, squared and logistic loss, and a DropoutMLP) at "
                        "several widths and keep rates.", Config, compute, write, theory, order=56,
                        smoke=dict(widths=(20, 40), steps=10, records=2, n_train=10, mnist_train=20, input_size=7,
                                   mlp_batch=10))
run = EXPERIMENT.run
