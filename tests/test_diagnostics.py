"""Matrix-free curvature against dense references."""

import torch

from dropdyn.curvature import hvp, mean_field_sharpness, top_eigenvalue
from dropdyn.model import risk


def small():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    Z = torch.randn(7, 2, generator=g, dtype=torch.float64)
    y = torch.randn(7, generator=g, dtype=torch.float64)
    return X, Z, y


def dense_hessian(fn, x):
    return torch.autograd.functional.hessian(fn, x).reshape(x.numel(), x.numel())


def test_hvp_matches_dense_hessian():
    X, Z, y = small()
    fn = lambda P: risk(P, Z, y)  # noqa: E731
    H = dense_hessian(fn, X)
    v = torch.randn(X.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hvp(fn, X, v).reshape(-1), H @ v.reshape(-1))


def test_top_eigenvalue_is_the_largest_positive_one():
    X, Z, y = small()
    fn = lambda P: 6 * risk(P, Z, y)  # noqa: E731
    evals = torch.linalg.eigvalsh(dense_hessian(fn, X))
    assert abs(mean_field_sharpness(X, Z, y) - float(evals.max())) < 1e-7 * float(evals.abs().max())


def test_top_eigenvalue_with_a_dominant_negative_eigenvalue():
    A = torch.diag(torch.tensor([-5.0, 2.0, 1.0, -1.0], dtype=torch.float64))
    fn = lambda x: 0.5 * x @ A @ x  # noqa: E731
    assert abs(top_eigenvalue(fn, torch.ones(4, dtype=torch.float64)) - 2.0) < 1e-5


def test_largest_algebraic_and_largest_magnitude_eigenvalue():
    """H = diag(1, 0.5, −3): the largest eigenvalue is 1, the largest in magnitude −3 (PyHessian's answer)."""
    import torch

    d = torch.tensor([1.0, 0.5, -3.0], dtype=torch.float64)
    fn = lambda x: 0.5 * (d * x * x).sum()  # noqa: E731
    x = torch.ones(3, dtype=torch.float64)
    assert abs(top_eigenvalue(fn, x) - 1.0) < 1e-8
    assert abs(top_eigenvalue(fn, x, which="magnitude") + 3.0) < 1e-8


def test_top_eigenvalue_of_one_parameter_and_of_a_zero_hessian():
    """N = 1, where ARPACK cannot run: the Hessian is its own eigenvalue (−2.5 at x = 0.7 for
    f = x⁴/4 − 2x², since f'' = 3x² − 4). A zero Hessian, where ARPACK cannot start: 0."""
    x = torch.tensor([0.7], dtype=torch.float64)
    assert abs(top_eigenvalue(lambda t: (t**4 / 4 - 2 * t**2).sum(), x) - (3 * 0.49 - 4)) < 1e-12
    assert top_eigenvalue(lambda t: t.sum(), torch.ones(5, dtype=torch.float64)) == 0.0


def test_flatness_trace_and_its_standard_error_on_a_known_hessian():
    """Loss ½(θ₁ + θ₂ − y)²: H = [[1, 1], [1, 1]], top eigenvalue 2, trace 2. A Rademacher
    probe gives zᵀHz = (z₁ + z₂)² ∈ {0, 4}, each with probability ½: standard deviation 2,
    so the standard error over 400 probes is 2/√400 = 0.1: within ±10% unless the share of
    4s strays beyond 0.5 ± 0.1, four standard deviations (the probes are seeded; every
    zᵀHz is exact, so no rounding can move the verdict)."""
    from torch import nn

    from dropdyn.curvature import flatness

    net = nn.Linear(2, 1, bias=False).double()
    x, y = torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    res = flatness(net, lambda out, t: 0.5 * ((out - t) ** 2).sum(), x, y, probes=400)
    assert abs(res["top_eigenvalue"] - 2.0) < 1e-10
    assert 0.09 < res["trace_se"] < 0.11
    assert abs(res["trace"] - 2.0) < 5 * res["trace_se"]


def test_bypass_terms_against_the_dense_hessian():
    """A, B, C of the sharpness-bypass expansion: with G the rows ∇V_i = n ∂R/∂x_i and H the
    dense Hessian of R, GᵀHG = B + C exactly (H's Gauss–Newton part gives B, its per-neuron
    part C), n‖∂R/∂X‖² = A, and C from each neuron's dense Hessian of V with r held fixed."""
    from dropdyn.curvature import bypass_terms
    from dropdyn.model import features, predict

    X, Z, y = small()
    n = X.shape[0]
    terms = bypass_terms(X, Z, y, "tanh")
    fn = lambda P: risk(P, Z, y, "tanh")  # noqa: E731
    G = n * torch.func.grad(fn)(X)
    H = dense_hessian(fn, X)
    g = G.reshape(-1)
    assert abs(terms["A"] - float((G * G).sum()) / n) < 1e-12
    assert abs(terms["B"] + terms["C"] - float(g @ H @ g)) < 1e-10 * abs(float(g @ H @ g))
    r = (predict(X, Z, "tanh") - y).detach()
    C = 0.0
    for i in range(n):
        Vi = lambda x: (features(x[None], Z, "tanh")[0] * r).mean()  # noqa: E731, B023
        Hi = torch.autograd.functional.hessian(Vi, X[i])
        C += float(G[i] @ Hi @ G[i]) / n
    assert abs(terms["C"] - C) < 1e-10 * max(1.0, abs(C))
    assert terms["B"] > 0 and terms["A"] > 0
