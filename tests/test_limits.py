"""The five limits as engine specifications (THEORY.md §2)."""

import math

import pytest
import torch

from dropdyn import draw_masks, simulate
from dropdyn.limits import coupled_limit, simulate_limit
from dropdyn.metrics import particle_distance
from dropdyn.model import grad_penalty, grad_potential, predict


def problem(seed=0, n=30, m=8, d=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d + 1, generator=g, dtype=torch.float64)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    return X, Z, y


def test_phase_I_is_gd_with_a_small_step():
    X, Z, y = problem()
    lim = simulate_limit("I", X, Z, y, time=1.0, h=0.01)
    gd = simulate("gd", X, Z, y, lr=0.01, keep=1.0, steps=100)
    assert torch.equal(lim.particles, gd.particles)
    assert math.isclose(float(lim.times[-1]), 1.0)


def test_phase_II_is_penalised_gd():
    """One Euler step of II = X − h(∇V + β∇P); and II with β = (1−q)/(nq) = penalty GD."""
    X, Z, y = problem(1)
    beta, h = 0.3, 0.05
    one = simulate_limit("II", X, Z, y, time=h, h=h, beta=beta).particles
    r = predict(X, Z) - y
    ref = X - h * (grad_potential(X, Z, r) + beta * grad_penalty(X, Z))
    torch.testing.assert_close(one, ref, rtol=1e-12, atol=1e-12)
    q, n = 0.2, X.shape[0]
    lim = simulate_limit("II", X, Z, y, time=1.0, h=0.05, beta=(1 - q) / (n * q))
    pen = simulate("penalty", X, Z, y, lr=0.05, keep=q, steps=20)
    torch.testing.assert_close(lim.particles, pen.particles, rtol=1e-12, atol=1e-12)


def test_phase_V_with_q_one_is_discrete_gd():
    X, Z, y = problem(2)
    lim = simulate_limit("V", X, Z, y, time=3.0, lr=0.3, keep=1.0)
    gd = simulate("gd", X, Z, y, lr=0.3, keep=1.0, steps=10)
    assert torch.equal(lim.particles, gd.particles)


def test_phase_V_jumps_with_bernoulli_clocks():
    """A ringing neuron moves by (τ̄/q̄)∇V, the others not at all."""
    X, Z, y = problem(3)
    clocks = draw_masks(0.4, 1, (30,), seed=2)
    out = simulate_limit("V", X, Z, y, time=0.2, lr=0.2, keep=0.4, clocks=clocks).particles
    ref = X - (0.2 / 0.4) * clocks[0, :, None] * grad_potential(X, Z, predict(X, Z) - y)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_coarse_poisson_clocks_are_refused_with_the_bound():
    X, Z, y = problem()
    with pytest.raises(ValueError, match=r"h=0.2 is too coarse .* h ≤ α·0.1 = 0.1"):
        simulate_limit("III", X, Z, y, time=1.0, h=0.2, alpha=1.0)
    with pytest.raises(ValueError, match=r"h=0.05 is too coarse .* h ≤ α·0.1 = 0.01"):  # h/α, not h·α
        simulate_limit("IV", X, Z, y, time=1.0, h=0.05, alpha=0.1, beta=1.0)
    assert simulate_limit("III", X, Z, y, time=1.0, h=0.01, alpha=0.1).info["h"] == 0.01  # h/α = 0.1: allowed
    with pytest.raises(ValueError, match="phase III needs alpha"):
        simulate_limit("III", X, Z, y, time=1.0, h=0.01)
    with pytest.raises(ValueError, match="unknown phase 'VI'"):
        simulate_limit("VI", X, Z, y, time=1.0, h=0.01)


def test_coupled_limit_maps_each_phase_to_its_engine_arguments():
    """I, II at h = lr (II with β); III, IV on the dropout masks themselves when lr/α ≤ 0.1
    (IV with β), else on their own clocks at the coarsest admissible step, recorded at the
    end only; V on the masks at (τ̄, q̄)."""
    X, Z, y = problem(5)
    lr, T = 0.02, 0.2
    masks = draw_masks(0.3, 10, (30,), seed=4)

    def same(a, b):
        assert torch.equal(a.particles, b.particles) and torch.equal(a.times, b.times)
        assert a.info["h"] == b.info["h"]

    kw = dict(time=T, lr=lr, masks=masks, alpha=0.5, beta=0.7, tau=0.04, keep=0.3, seed=3)
    same(coupled_limit("I", X, Z, y, **kw), simulate_limit("I", X, Z, y, time=T, h=lr))
    same(coupled_limit("II", X, Z, y, **kw), simulate_limit("II", X, Z, y, time=T, h=lr, beta=0.7))
    same(coupled_limit("III", X, Z, y, **kw), simulate_limit("III", X, Z, y, time=T, h=lr, alpha=0.5, clocks=masks))
    same(coupled_limit("IV", X, Z, y, **kw),
         simulate_limit("IV", X, Z, y, time=T, h=lr, alpha=0.5, beta=0.7, clocks=masks, seed=3))
    same(coupled_limit("V", X, Z, y, **{**kw, "time": 0.4}),
         simulate_limit("V", X, Z, y, time=0.4, lr=0.04, keep=0.3, clocks=masks))
    # lr/α = 0.2 > 0.1: own clocks at h = T / ⌈T/(0.1 α)⌉ = 0.01, recorded at 0 and T only
    own = coupled_limit("III", X, Z, y, **{**kw, "alpha": 0.1})
    assert own.info["h"] == pytest.approx(0.01) and own.times.tolist() == pytest.approx([0.0, T])
    assert torch.equal(own.particles, simulate_limit("III", X, Z, y, time=T, h=0.01, alpha=0.1, seed=3).particles)
    assert not torch.equal(own.particles, simulate_limit("III", X, Z, y, time=T, h=0.01, alpha=0.1, seed=4).particles)
    # lr/α = 0.1 exactly (0.025/0.25 is 0.1 in floating point) is still coupled: the masks at h = lr
    same(coupled_limit("III", X, Z, y, **{**kw, "alpha": 0.25, "lr": 0.025, "time": 0.25}),
         simulate_limit("III", X, Z, y, time=0.25, h=0.025, alpha=0.25, clocks=masks))


def test_phase_III_poisson_ring_rate():
    """Thinned clocks ring at rate 1/α: over time T a neuron rings ≈ T/α times."""
    X, Z, y = problem(4, n=4000)
    alpha, h, T = 0.5, 0.01, 2.0
    res = simulate_limit("III", X, Z, y, time=T, h=h, alpha=alpha, seed=1, snapshot_every=1)
    moved = (res.snapshots[1:] != res.snapshots[:-1]).any(-1).double()  # (steps, n)
    rings = moved.sum(0)
    assert abs(float(rings.mean()) - T / alpha) < 5 * math.sqrt(T / alpha / 4000)


def test_coupled_phase_III_limit_approaches_dropout_as_width_grows():
    """III scaling τ_n = α q_n, q_n = 2 n^(−1/2): dropout and the coupled limit (same
    clocks, h = τ_n) get closer as the width grows."""
    alpha, T = 0.5, 2.0
    dist = []
    for n in (400, 6400):
        g = torch.Generator().manual_seed(5)
        X = torch.randn(n, 4, generator=g, dtype=torch.float64)
        Z = torch.randn(10, 3, generator=g, dtype=torch.float64)
        y = torch.randn(10, generator=g, dtype=torch.float64)
        q = 2 / math.sqrt(n)
        h = alpha * q
        steps = round(T / h)
        masks = draw_masks(q, steps, (n,), seed=3)
        drop = simulate("dropout", X, Z, y, lr=h, keep=q, steps=steps, masks=masks)
        lim = simulate_limit("III", X, Z, y, time=steps * h, h=h, alpha=alpha, clocks=masks)
        dist.append(float(particle_distance(drop.particles, lim.particles)))
    # β_n = 1/(n q_n) falls 4× here; the particle gap, O(β), fell 3.7× when written
    assert dist[1] < dist[0] / 2, dist


def test_phase_IV_mean_jump_is_the_penalty_corrected_drift():
    """E[jump] = −α(∇V[μ] + β∇P)(X) (THEORY.md §2, phase IV), by Monte Carlo over
    10,000 replicas in which every clock rings once."""
    X, Z, y = problem(6, n=12)
    R, alpha, beta, h = 10_000, 0.5, 0.7, 0.05
    clocks = torch.ones(1, 12, dtype=torch.bool)
    out = simulate_limit("IV", X.expand(R, 12, 4).clone(), Z, y, time=h, h=h, alpha=alpha, beta=beta,
                         clocks=clocks, seed=4).particles
    jump = out - X
    drift = -alpha * (grad_potential(X, Z, predict(X, Z) - y) + beta * grad_penalty(X, Z))
    se = jump.std(0) / math.sqrt(R)
    assert torch.all((jump.mean(0) - drift).abs() <= 5 * se + 1e-12)
    assert float(jump.std(0).max()) > 0  # the forward pass is random


def test_phase_IV_with_clocks_that_differ_across_replicas():
    """Replicas whose clocks ring for different neurons, and different numbers of them (the
    kernel pads every replica to the largest count): a neuron that did not ring stays put,
    one that rang jumps by −α(∇V[μ] + β∇P) on average; one ring alone moves its neuron."""
    X, Z, y = problem(7, n=12)
    R, alpha, beta, h = 20_000, 0.5, 0.7, 0.05
    clocks = draw_masks(0.3, 1, (R, 12), seed=8)
    out = simulate_limit("IV", X.expand(R, 12, 4).clone(), Z, y, time=h, h=h, alpha=alpha, beta=beta,
                         clocks=clocks, seed=4).particles
    rang = clocks[0]
    assert len(set(rang.sum(-1).tolist())) > 5  # many different counts per replica
    jump = out - X
    assert torch.all(jump[~rang] == 0) and torch.all((jump[rang] != 0).any(-1))
    drift = -alpha * (grad_potential(X, Z, predict(X, Z) - y) + beta * grad_penalty(X, Z))
    for i in range(12):
        ji = jump[rang[:, i], i]
        assert torch.all((ji.mean(0) - drift[i]).abs() <= 5 * ji.std(0) / math.sqrt(len(ji)) + 1e-12), i
    # each replica draws the Y_l of its own population: in one whose output weights a are all
    # 0, φ ≡ 0 there, so its residual is −y and its jump −α∇V(x; −y), whatever is drawn
    silent = X.clone()
    silent[:, 0] = 0
    both = simulate_limit("IV", torch.stack([X, silent]), Z, y, time=h, h=h, alpha=alpha, beta=beta,
                          clocks=torch.ones(1, 2, 12, dtype=torch.bool), seed=4).particles
    torch.testing.assert_close(both[1] - silent, -alpha * grad_potential(silent, Z, -y), rtol=1e-12, atol=1e-14)
    one = torch.zeros(1, 1, 12, dtype=torch.bool)
    one[0, 0, 3] = True
    moved = simulate_limit("IV", X[None], Z, y, time=h, h=h, alpha=alpha, beta=beta, clocks=one, seed=4).particles[0]
    assert not torch.equal(moved[3], X[3]) and torch.equal(moved[torch.arange(12) != 3], X[torch.arange(12) != 3])
