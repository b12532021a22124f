"""The five limits of docs/theory.md §2 as simulations of the particle engine.

Each limit is an engine :class:`~dropdyn.engine.Rule` with a time step h and a clock
law, run on N particles (N independent of any width):

    I    gradient flow of R              GD rule, explicit Euler with step h
    II   gradient flow of R + β∫P dμ      penalty rule with c = β, step h
    III  Poisson clocks of rate 1/α       RaM rule, step h, keep h/α: a neuron rings in
                                          [t, t+h) with probability h/α and jumps by α∇V
    IV   critical kernel                  critical rule (β), step h, keep h/α
    V    Bernoulli clocks, discrete time  RaM rule, step τ̄, keep q̄

Poisson clocks are simulated by thinning: at most one ring per interval, with
probability h/α instead of 1 − e^(−h/α); the per-ring error is ≈ h/(2α), and h > α/10
is refused. Clocks can be *coupled* to a finite-width dropout run by passing its masks
as ``clocks`` (with h = τ_n and h/α = q_n they are exactly the same draws).
"""

from __future__ import annotations

import math

from ._checks import InputError, check_choice, check_keep, check_positive
from .engine import Rule, SimulationResult, simulate
from .phase import PHASES

MAX_THINNING = 0.1  # h/α at most this for Poisson clocks


def limit_rule(phase: str, *, h: float | None = None, alpha: float | None = None, beta: float | None = None,
               lr: float | None = None, keep: float | None = None) -> tuple[Rule, float, float]:
    """``(rule, step, keep)`` that simulate limit ``phase`` (see the module table).

    I: ``h``; II: ``h``, ``beta``; III: ``h``, ``alpha``; IV: ``h``, ``alpha``, ``beta``;
    V: ``lr`` = τ̄, ``keep`` = q̄."""
    check_choice("phase", phase, PHASES)

    def need(name, value):
        if value is None:
            raise InputError(f"phase {phase} needs {name}")
        return check_positive(name, value)

    if phase == "V":
        return Rule(False, True), need("lr", lr), check_keep(need("keep", keep))
    h = need("h", h)
    if phase == "I":
        return Rule(False, False), h, 1.0
    if phase == "II":
        return Rule(False, False, need("beta", beta)), h, 1.0
    alpha = need("alpha", alpha)
    if h / alpha > MAX_THINNING:
        raise InputError(
            f"time step h={h:g} is too coarse for Poisson clocks of rate 1/α = {1 / alpha:g}: thinning needs "
            f"h ≤ α·{MAX_THINNING:g} = {alpha * MAX_THINNING:g} "
            f"(its per-ring error is ≈ h/(2α) = {h / (2 * alpha):.3g})")
    if phase == "III":
        return Rule(False, True), h, h / alpha
    return Rule(False, True, beta=need("beta", beta)), h, h / alpha


def simulate_limit(phase: str, particles, inputs, targets, *, time: float, h: float | None = None,
                   alpha: float | None = None, beta: float | None = None, lr: float | None = None,
                   keep: float | None = None, clocks=None, **kwargs) -> SimulationResult:
    """Simulate limit ``phase`` up to ``time`` from ``particles`` (N particles, any N).

    Steps: ``round(time / step)`` with the step of :func:`limit_rule`; ``clocks``
    (bool ``(steps, N)`` or ``(steps, replicas, N)``, or a :class:`~dropdyn.masks.MaskStream`)
    are the ring indicators, e.g. the masks of a coupled dropout run; otherwise they are
    drawn from ``seed``. Other
    keyword arguments go to :func:`dropdyn.simulate` (``seed``, ``activation``,
    ``record_every``, ``test_inputs`` …), except that phase IV runs without ``graph``
    (its forward passes are random in number: no CUDA graph replays them).
    ``result.times`` are physical times.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X0, Z, y = torch.randn(200, 3, generator=g), torch.randn(20, 2, generator=g), torch.randn(20, generator=g)
    >>> lim = simulate_limit("III", X0, Z, y, time=1.0, h=0.01, alpha=0.5, seed=1)
    >>> float(lim.times[-1]), lim.info["phase"]
    (1.0, 'III')
    """
    rule, step, q = limit_rule(phase, h=h, alpha=alpha, beta=beta, lr=lr, keep=keep)
    time = check_positive("time", time)
    steps = max(1, round(time / step))
    if not math.isclose(steps * step, time, rel_tol=1e-6):
        raise InputError(f"time {time:g} is not a multiple of the step {step:g}")
    if rule.critical:
        kwargs["graph"] = False
    res = simulate(rule, particles, inputs, targets, lr=step, keep=q, steps=steps, masks=clocks, **kwargs)
    res.info.update(phase=phase, h=step, alpha=alpha, beta=beta)
    return res


def coupled_limit(phase: str, particles, inputs, targets, *, time: float, lr: float, masks, alpha: float | None = None,
                  beta: float | None = None, tau: float | None = None, keep: float | None = None, seed: int = 0,
                  **kwargs) -> SimulationResult:
    """Limit ``phase`` beside a dropout run of step ``lr`` and keep-masks ``masks``
    ``(steps, [R,] N)`` (or a mask stream made like the run's), coupled where it can be: the
    phase → engine-arguments map that every comparison of dropout with its limit uses.

    I, II: step h = ``lr`` (II with ``beta``). III, IV: clocks of rate 1/``alpha`` (IV with
    ``beta``): the dropout masks themselves at h = ``lr`` when h/α ≤ MAX_THINNING, else
    independent clocks at the coarsest admissible step, recorded at ``time`` only. V: the
    discrete limit (``tau``, ``keep``) = (τ̄, q̄) with the masks as clocks. Other keyword
    arguments go to :func:`simulate_limit`."""
    args = dict(time=time, seed=seed, **kwargs)
    if phase == "V":
        return simulate_limit("V", particles, inputs, targets, lr=tau, keep=keep, clocks=masks, **args)
    if phase in ("I", "II"):
        return simulate_limit(phase, particles, inputs, targets, h=lr, beta=beta if phase == "II" else None, **args)
    alpha = check_positive("alpha", alpha)
    coupled = lr / alpha <= MAX_THINNING
    h = lr if coupled else time / math.ceil(time / (alpha * MAX_THINNING))
    if not coupled:
        args["record_every"] = max(1, round(time / h))
    return simulate_limit(phase, particles, inputs, targets, h=h, alpha=alpha, beta=beta if phase == "IV" else None,
                          clocks=masks if coupled else None, **args)
