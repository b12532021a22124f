"""Batched simulation of dropout and its stochastic modified equations (docs/theory.md §3).

Four dynamics from one ``θ_0``, each for ``R`` replicas at once (``θ`` is ``(R, width, d + 1)``):

* ``dropout``: ``θ ← θ − η ∇R_S^drop(θ; δ)`` with fresh masks ``δ`` each step (eq. 6);
* ``sme1``: ``dΘ = −∇L_S dt + √η Σ^{1/2} dW`` (order 1);
* ``sme2``: drift ``−∇(L_S + (η/4)‖∇L_S‖²)``, same diffusion (order 2);
* ``gd``: ``θ ← θ − η ∇L_S`` (the drift alone, plain GD on the modified loss).

The SMEs are integrated by Euler–Maruyama with sub-step ``h = η / m``:
``Θ ← Θ + h b(Θ) + √(hη) ξ``, ``ξ ~ N(0, Σ(Θ))``. ``diffusion="factor"`` draws ξ as ``F z``
through the exact factor of Σ (:class:`dropdyn.sme.NoiseCovariance`, matrix-free);
``diffusion="dense"`` forms Σ, takes its eigendecomposition square root and multiplies —
the reference and the benchmark baseline, for small D only. Time is ``t = k η`` after k
dropout steps; records are taken every ``record_every`` dropout steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import InputError, check_choice, check_int, check_keep, check_memory, check_positive, check_seed
from .loop import DivergenceWatch, run_loop, within
from .sme import (
    NoiseCovariance,
    check_problem,
    check_substeps,
    dense_sqrt,
    drift,
    dropout_gradient,
    modified_loss_grad,
    noise_covariance,
    risk_standard,
)

Tensor = torch.Tensor
DYNAMICS = ("dropout", "sme1", "sme2", "gd")


@dataclass
class SMETrajectory:
    """Records of one simulation, named as in :class:`dropdyn.engine.SimulationResult`:
    ``steps``/``times`` ``(T,)`` index the records; ``risk`` ``(T, R)`` is the training risk
    R_S(θ) per replica; ``particles`` ``(R, width, d + 1)`` the final θ (the state before a
    divergence, ``diverged_at_step``). Also ``mean`` ``(T, width, d + 1)``, the replica mean
    of θ; ``variance`` ``(T,)``, the sum over coordinates of the replica sample variance (so
    ``mean_error = √(variance / R)`` is the Monte-Carlo standard error of ``‖mean‖``-type
    quantities); ``observed[name]`` ``(T, R)``, per-replica observables (``train_risk`` too)."""

    dynamics: str
    steps: Tensor
    times: Tensor
    risk: Tensor
    mean: Tensor
    variance: Tensor
    observed: dict[str, Tensor]
    particles: Tensor
    replicas: int
    diverged_at_step: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def mean_error(self) -> Tensor:
        """Monte-Carlo standard error of the replica mean, ``√(Σ_coords Var / R)`` per record."""
        return (self.variance / self.replicas).sqrt()


def _dense_noise(theta: Tensor, inputs: Tensor, targets: Tensor, keep: float, activation: str,
                 generator: torch.Generator) -> Tensor:
    """One draw of ``N(0, Σ(θ))`` per replica by the dense reference: form Σ, ``Σ^{1/2} z``."""
    out = torch.empty_like(theta)
    for r in range(theta.shape[0]):
        root = dense_sqrt(noise_covariance(theta[r], inputs, targets, keep, activation).to_dense())
        z = torch.randn(root.shape[0], dtype=theta.dtype, device=theta.device, generator=generator)
        out[r] = (root @ z).reshape(theta.shape[1:])
    return out


def sme_step(dynamics: str, theta: Tensor, inputs: Tensor, targets: Tensor, *, lr: float, keep: float,
         substeps: int = 1, activation: str = "tanh", diffusion: str = "factor",
         generator: torch.Generator | None = None) -> Tensor:
    """Advance ``theta`` ``(R, width, d + 1)`` by one dropout step of time η (``substeps``
    Euler–Maruyama sub-steps for the SMEs). The problem is not checked here (each check
    would read the device every sub-step): :func:`simulate_sme` checks it once."""
    if dynamics == "dropout":
        p = keep
        u = torch.rand(theta.shape[:-1], dtype=theta.dtype, device=theta.device, generator=generator)
        mask = (u < p).to(theta.dtype) / p
        return theta - lr * dropout_gradient(theta, inputs, targets, mask, activation)
    if dynamics == "gd":
        return theta - lr * modified_loss_grad(theta, inputs, targets, keep, activation)
    h = lr / substeps
    order = 2 if dynamics == "sme2" else 1
    for _ in range(substeps):
        S = NoiseCovariance(theta, inputs, targets, keep, activation, second=order == 2, validate=False)
        b = drift(S.f, S.c2, lr, order)
        noise = S.sample(generator) if diffusion == "factor" else _dense_noise(theta, inputs, targets, keep,
                                                                             activation, generator)
        theta = theta + h * b + math.sqrt(h * lr) * noise
    return theta


def simulate_sme(
    dynamics: str,
    theta0: Tensor,
    inputs: Tensor,
    targets: Tensor,
    *,
    lr: float,
    keep: float,
    steps: int,
    replicas: int = 1,
    substep: float | None = None,
    record_every: int = 1,
    activation: str = "tanh",
    diffusion: str = "factor",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    observe: Callable[[Tensor], dict[str, Tensor]] | None = None,
    divergence_threshold: float = 1e6,
    check_every: int | None = None,
    progress=False,
) -> SMETrajectory:
    """Simulate ``dynamics`` (one of ``DYNAMICS``) for ``steps`` dropout steps of size ``lr``
    from ``theta0`` ``(width, d + 1)``, ``replicas`` copies at once.

    ``substep`` (default ``lr / 10``) is the SMEs' Euler–Maruyama step and must divide
    ``lr``. ``observe(θ)`` may return extra per-replica observables ``{name: (R,)}``. A run
    whose parameters become non-finite or exceed ``divergence_threshold · (1 + max|θ_0|)``
    stops; ``diverged_at_step`` is that step and the records up to the step before are kept.
    Randomness comes from ``generator``, or a fresh one seeded with ``seed`` (not both; with
    neither, torch's default generator). ``check_every``: the host reads the divergence test
    every this many steps and at every record (default 1 on the CPU, 16 on a GPU), the device
    keeping the last good state in between, so the result is the same for any value.

    >>> import torch
    >>> from dropdyn.sme_dynamics import simulate_sme
    >>> g = torch.Generator().manual_seed(0)
    >>> theta0 = torch.randn(8, 3, generator=g, dtype=torch.float64) / 3
    >>> X, y = torch.randn(30, 2, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    >>> tr = simulate_sme("sme1", theta0, X, y, lr=0.1, keep=0.5, steps=20, replicas=4, seed=1)
    >>> tuple(tr.particles.shape), tuple(tr.risk.shape), tr.diverged_at_step
    ((4, 8, 3), (21, 4), None)
    """
    check_choice("dynamics", dynamics, DYNAMICS)
    check_choice("diffusion", diffusion, ("factor", "dense"))
    check_problem(theta0, inputs, targets)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if seed is not None:
        if generator is not None:
            raise InputError("give a seed or a generator, not both")
        generator = torch.Generator(device=theta0.device).manual_seed(check_seed(seed))
    if theta0.dim() != 2:
        raise InputError(f"theta0 must be (width, d + 1), got shape {tuple(theta0.shape)}")
    lr, keep = check_positive("lr", lr), check_keep(keep)
    steps, replicas = check_int("steps", steps, 1), check_int("replicas", replicas, 1)
    record_every = check_int("record_every", record_every, 1)
    divergence_threshold = check_positive("divergence_threshold", divergence_threshold)
    substeps = check_substeps(lr, lr / 10 if substep is None else substep) if dynamics in ("sme1", "sme2") else 1

    check_memory(f"{replicas:,} replicas of {theta0.numel():,} parameters",  # θ, its noise and its gradient
                 3 * replicas * theta0.numel() * theta0.element_size(), theta0.device)
    theta = theta0.expand(replicas, *theta0.shape).clone()
    limit = divergence_threshold * (1.0 + float(theta0.abs().max()))
    times, means, variances, steps_rec = [], [], [], []
    observed: dict[str, list[Tensor]] = {}

    def record(k: int, th: Tensor) -> None:
        steps_rec.append(k)
        times.append(k * lr)
        means.append(th.mean(0))
        variances.append(th.var(0, unbiased=True).sum() if replicas > 1 else th.new_zeros(()))
        obs = {"train_risk": risk_standard(th, inputs, targets, activation)}
        obs.update(observe(th) if observe is not None else {})
        for name, val in obs.items():
            observed.setdefault(name, []).append(val.detach())

    state = {"theta": theta}
    watch = DivergenceWatch(check_every, theta0.device)

    def advance(k: int, due: bool) -> int | None:
        new = sme_step(dynamics, state["theta"], inputs, targets, lr=lr, keep=keep, substeps=substeps,
                       activation=activation, diffusion=diffusion, generator=generator)
        ok = within(new.abs(), limit)
        (state["theta"],), diverged = watch.keep(k, ok, (new,), (state["theta"],), read=due)
        return diverged

    diverged = run_loop(steps, advance, lambda k: record(k, state["theta"]), record_every=record_every,
                        progress=progress, desc=dynamics)
    theta = state["theta"]
    observed = {n: torch.stack(v) for n, v in observed.items()}
    return SMETrajectory(dynamics, torch.tensor(steps_rec), torch.tensor(times, dtype=theta0.dtype),
                         observed["train_risk"], torch.stack(means), torch.stack(variances), observed, theta, replicas,
                         diverged, {"dynamics": dynamics, "lr": lr, "keep": keep, "steps": steps,
                                    "replicas": replicas, "substeps": substeps, "activation": activation,
                                    "seed": seed, "threshold": limit,
                                    "check_every": watch.every})

