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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import InputError, check_choice, check_int, check_keep, check_memory, check_positive, check_seed
from .loop import DivergenceWatch, run_loop, within
from .masks import MaskStream, multipliers
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
from .threads import using

Tensor = torch.Tensor
DYNAMICS = ("dropout", "sme1", "sme2", "gd")


SMOOTH = ("tanh", "sigmoid", "erf", "softplus", "identity")  # σ smooth: within the SME theorem's assumptions

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
             generator: torch.Generator | None = None, masks: MaskStream | None = None) -> Tensor:
    """Advance ``theta`` ``(R, width, d + 1)`` by one dropout step of time η (``substeps``
    Euler–Maruyama sub-steps for the SMEs). Dropout's masks come from ``masks`` (a
    :class:`dropdyn.masks.MaskStream` of shape ``(R, width)``), or from a stream on
    ``generator``; the SMEs' noise from ``generator`` (default: torch's). The problem is not
    checked here (each check would read the device every sub-step): :func:`simulate_sme`
    checks it once."""
    generator = generator if generator is not None else default_generator(theta.device)
    if dynamics == "dropout":
        masks = masks if masks is not None else MaskStream(keep, theta.shape[:-1], generator=generator)
        return theta - lr * dropout_gradient(theta, inputs, targets, multipliers(masks.next(), keep, theta.dtype),
                                             activation)
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


def default_generator(device: torch.device) -> torch.Generator:
    """Torch's default generator of ``device``."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class SMEDriver:
    """:func:`simulate_sme`'s run as a :class:`dropdyn.loop.Driver`: the state is θ ``(R, width,
    d + 1)``; records are the replica mean, variance and observables."""

    def __init__(self, dynamics: str, theta0: Tensor, inputs: Tensor, targets: Tensor, *, lr: float, keep: float,
                 replicas: int, substeps: int, activation: str, diffusion: str, generator: torch.Generator,
                 observe, limit: float, check_every: int | None):
        self.dynamics, self.theta0, self.inputs, self.targets = dynamics, theta0, inputs, targets
        self.lr, self.keep, self.replicas, self.substeps = lr, keep, replicas, substeps
        self.activation, self.diffusion, self.generator, self.observe = activation, diffusion, generator, observe
        self.masks = MaskStream(keep, (replicas, theta0.shape[0]), generator=generator)
        self.limit, self.watch = limit, DivergenceWatch(check_every, theta0.device)
        self.steps: list[int] = []
        self.means: list[Tensor] = []
        self.variances: list[Tensor] = []
        self.observed: dict[str, list[Tensor]] = {}

    def start(self) -> Tensor:
        return self.theta0.expand(self.replicas, *self.theta0.shape).clone()

    def advance(self, theta: Tensor, k: int, due: bool) -> tuple[Tensor, int | None]:
        new = sme_step(self.dynamics, theta, self.inputs, self.targets, lr=self.lr, keep=self.keep,
                       substeps=self.substeps, activation=self.activation, diffusion=self.diffusion,
                       generator=self.generator, masks=self.masks)
        (theta,), diverged = self.watch.keep(k, within(new.abs(), self.limit), (new,), (theta,), read=due)
        return theta, diverged

    def record(self, theta: Tensor, k: int) -> None:
        self.steps.append(k)
        self.means.append(theta.mean(0))
        self.variances.append(theta.var(0, unbiased=True).sum() if self.replicas > 1 else theta.new_zeros(()))
        obs = {"train_risk": risk_standard(theta, self.inputs, self.targets, self.activation)}
        obs.update(self.observe(theta) if self.observe is not None else {})
        for name, val in obs.items():
            self.observed.setdefault(name, []).append(val.detach())


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
    progress=None,
    threads: int | None = None,
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
    ``progress``: as for :func:`dropdyn.simulate` (default: a bar once the call has run 2 s).
    ``threads``: torch's intra-op threads for the call (default: :mod:`dropdyn.threads`).

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
    driver = SMEDriver(dynamics, theta0, inputs, targets, lr=lr, keep=keep, replicas=replicas, substeps=substeps,
                       activation=activation, diffusion=diffusion,
                       generator=generator if generator is not None else default_generator(theta0.device),
                       observe=observe, limit=divergence_threshold * (1.0 + float(theta0.abs().max())),
                       check_every=check_every)
    with using(threads):
        theta, diverged = run_loop(driver, steps, record_every=record_every, progress=progress, desc=dynamics)
    observed = {n: torch.stack(v) for n, v in driver.observed.items()}
    times = torch.tensor([k * lr for k in driver.steps], dtype=theta0.dtype)
    caveat = None
    if dynamics in ("sme1", "sme2") and activation not in SMOOTH:
        caveat = (f"activation {activation!r} is not smooth: the SME's weak-order theorem assumes σ smooth with "
                  "bounded derivatives, so this SME is simulated, not guaranteed to approximate dropout")
        warnings.warn(caveat, stacklevel=2)
    return SMETrajectory(dynamics, torch.tensor(driver.steps), times, observed["train_risk"],
                         torch.stack(driver.means), torch.stack(driver.variances), observed, theta, replicas, diverged,
                         {"dynamics": dynamics, "lr": lr, "keep": keep, "steps": steps, "replicas": replicas,
                          "substeps": substeps, "activation": activation, "seed": seed, "threshold": driver.limit,
                          "check_every": driver.watch.every, "caveat": caveat})
