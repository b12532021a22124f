"""The sharpness-gap experiment's quantities (docs/theory.md §3, "Dropout at the edge of
stability"): S and u against a dense Hessian, ∇S against finite differences of uᵀH(θ)u,
α and β from it, σ_u² against the exact mask distribution and against Monte Carlo."""

import itertools

import numpy as np
import pytest
import torch

from dropdyn import sme
from dropdyn.experiments.sharpness_gap import edge_quantities, gaps, sharpness_gradient

f64 = torch.float64


def _problem(width=5, d=3, N=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(width, d + 1, generator=g, dtype=f64)
    return theta, torch.randn(N, d, generator=g, dtype=f64), torch.randn(N, generator=g, dtype=f64)


def _dense_hessian(theta, X, y, keep):
    return torch.autograd.functional.hessian(
        lambda t: sme.modified_loss(t.view(theta.shape), X, y, keep), theta.reshape(-1))


@pytest.mark.parametrize("keep", [0.6, 1.0])
def test_edge_quantities_against_dense_and_autograd(keep):
    theta, X, y = _problem()
    H = _dense_hessian(theta, X, y, keep)
    vals, vecs = torch.linalg.eigh(H)
    start = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1), dtype=f64)
    q, u = edge_quantities(theta, X, y, keep, start, theta.numel(), "tanh")
    assert abs(q["sharpness"] - float(vals[-1])) < 1e-9 * float(vals[-1])
    u = u / u.norm()
    assert abs(abs(float(u @ vecs[:, -1])) - 1) < 1e-8
    U = u.view(theta.shape)

    def S_along(t):  # uᵀ H(t) u with u held fixed
        return float(U.reshape(-1) @ _dense_hessian(t, X, y, keep) @ U.reshape(-1))

    gS = sharpness_gradient(theta, X, y, keep, U, "tanh")
    h = 1e-5
    for i in (0, 3, 7, 18):
        e = torch.zeros(theta.numel(), dtype=f64)
        e[i] = h
        fd = (S_along(theta + e.view(theta.shape)) - S_along(theta - e.view(theta.shape))) / (2 * h)
        assert abs(float(gS.reshape(-1)[i]) - fd) < 1e-6 * max(1.0, abs(fd))
    gL = sme.modified_loss_grad(theta, X, y, keep)
    assert abs(q["alpha"] + float((gL * gS).sum())) < 1e-12 * max(1.0, abs(q["alpha"]))
    assert abs(q["beta"] - float((gS * gS).sum())) < 1e-12 * q["beta"]


def test_sigma_u_squared_is_the_variance_along_u_over_all_masks_and_by_monte_carlo():
    theta, X, y = _problem(width=6, seed=2)
    keep = 0.7
    start = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(3), dtype=f64)
    q, u = edge_quantities(theta, X, y, keep, start, theta.numel(), "tanh")
    u = (u / u.norm()).view(theta.shape)
    proj, weights = [], []
    for bits in itertools.product([0.0, 1.0], repeat=6):
        b = torch.tensor(bits, dtype=f64)
        proj.append(float((sme.dropout_gradient(theta, X, y, b / keep) * u).sum()))
        weights.append(float(keep ** b.sum() * (1 - keep) ** (6 - b.sum())))
    p, w = np.array(proj), np.array(weights)
    exact = float((w * (p - (w * p).sum()) ** 2).sum())
    assert abs(q["sigma_u2"] - exact) < 1e-12 * exact
    n = 40_000
    g = torch.Generator().manual_seed(5)
    masks = (torch.rand(n, 6, generator=g, dtype=f64) < keep) / keep
    samples = (sme.dropout_gradient(theta.expand(n, *theta.shape), X, y, masks) * u).sum((1, 2))
    sq = (samples - samples.mean()).square()
    assert abs(float(sq.mean()) - q["sigma_u2"]) < 4 * float(sq.std()) / n**0.5


def test_the_gaps_of_a_run():
    run = {"step": np.array([50, 100]), "diverged": np.array(-1), "sharpness": np.array([3.0, 5.0]),
           "sigma_u2": np.array([0.1, 0.3]), "alpha": np.array([0.5, 1.5]), "beta": np.array([10.0, 30.0]),
           "x2": np.array([0.01, 0.03]), "loss": np.array([0.1, 0.1])}
    out = gaps(run, 0.25)
    assert out["measured"] == pytest.approx(8.0 - 4.0)
    assert out["predicted"] == pytest.approx(0.25 * 20.0 * 0.2 / (4 * 1.0))
    assert out["peak"] == pytest.approx(5.0 * 0.25 / 2) and out["balance"] == pytest.approx(2 * 1.0 / 20.0)
    assert np.isnan(gaps({**run, "alpha": np.array([-1.0, 0.5])}, 0.25)["predicted"])  # ᾱ ≤ 0: no prediction
    assert gaps({**run, "sigma_u2": np.zeros(2)}, 0.25)["predicted"] == 0.0  # no noise: no gap
    assert np.isnan(gaps({**run, "diverged": np.array(120)}, 0.25)["measured"])
