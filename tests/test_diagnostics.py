"""Matrix-free curvature against dense references."""

import pytest
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


@pytest.mark.parametrize("loss", ["logistic", "cross-entropy"])
def test_bypass_terms_of_other_losses_against_the_dense_hessian(loss):
    """For the logistic and cross-entropy losses too, GᵀHG = B + C with H the dense Hessian
    of the mean loss, and B is the Gauss–Newton form (1/m) Σ_j v_jᵀ ∇²ℓ_j v_j."""
    from dropdyn.curvature import bypass_terms
    from dropdyn.losses import LOSSES, encode
    from dropdyn.model import predict

    g = torch.Generator().manual_seed(3)
    K = 3 if loss == "cross-entropy" else 1
    X = torch.randn(5, K + 2, generator=g, dtype=torch.float64)
    Z = torch.randn(8, 2, generator=g, dtype=torch.float64)
    raw = torch.randint(0, 3, (8,), generator=g) if K > 1 else torch.randint(0, 2, (8,), generator=g).double() * 2 - 1
    y, K = encode(LOSSES[loss], "y", raw, 3 if K > 1 else None)
    n = X.shape[0]
    fn = lambda P: LOSSES[loss].risk(predict(P, Z, "tanh", outputs=K), y)  # noqa: E731
    terms = bypass_terms(X, Z, y, "tanh", loss)
    G = n * torch.func.grad(fn)(X)
    gg = G.reshape(-1)
    total = float(gg @ dense_hessian(fn, X) @ gg)
    assert abs(terms["B"] + terms["C"] - total) < 1e-10 * abs(total)
    assert abs(terms["A"] - float((G * G).sum()) / n) < 1e-12
    out = lambda P: predict(P, Z, "tanh", outputs=K)  # noqa: E731
    v = torch.func.jvp(out, (X,), (G,))[1].reshape(8, K)
    f = out(X).reshape(8, K)
    hessians = [torch.autograd.functional.hessian(lambda F, j=j: LOSSES[loss].value(F if K > 1 else F[0], y[j]),
                                                  f[j]).reshape(K, K) for j in range(8)]
    B = sum(float(v[j] @ hessians[j] @ v[j]) for j in range(8)) / 8
    assert abs(terms["B"] - B) < 1e-10 * abs(B)


def test_module_bypass_terms_against_dense_gauss_newton():
    """For a torch.nn network: B = (Jg)ᵀ ∇²_f L (Jg) from the dense Jacobian and output
    Hessian, B + C = gᵀHg from the dense Hessian, A = ‖g‖²; and for a one-hidden-layer net
    C is the sum over hidden units of each unit's own curvature with the residual fixed."""
    from torch import nn

    from dropdyn.curvature import module_bypass_terms

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    loss_fn = nn.functional.cross_entropy
    terms = module_bypass_terms(net, loss_fn, x, y)
    params = [p for p in net.parameters()]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def unflat(flat):
        out, i = [], 0
        for s in shapes:
            k = int(torch.tensor(s).prod())
            out.append(flat[i:i + k].view(s))
            i += k
        return out

    def model(flat):
        W1, b1, W2, b2 = unflat(flat)
        return torch.tanh(x @ W1.T + b1) @ W2.T + b2

    L = lambda flat: loss_fn(model(flat), y)  # noqa: E731
    g = torch.autograd.functional.jacobian(L, flat0)
    H = torch.autograd.functional.hessian(L, flat0)
    J = torch.autograd.functional.jacobian(lambda fl: model(fl).reshape(-1), flat0)
    f = model(flat0).detach()
    Hf = torch.autograd.functional.hessian(lambda F: loss_fn(F.view(9, 2), y), f.reshape(-1))
    B = float((J @ g) @ Hf @ (J @ g))
    assert abs(terms["A"] - float(g @ g)) < 1e-12 * float(g @ g)
    assert abs(terms["B"] - B) < 1e-10 * abs(B)
    assert abs(terms["B"] + terms["C"] - float(g @ H @ g)) < 1e-10 * abs(float(g @ H @ g))
    # C: each hidden unit's block (its row of W1, b1 and column of W2) with r = ∂L/∂f fixed
    r = torch.autograd.functional.jacobian(lambda F: loss_fn(F.view(9, 2), y), f.reshape(-1)).view(9, 2)
    W1, b1, W2, _ = unflat(flat0)
    gW1, gb1, gW2, _ = unflat(g)
    C = 0.0
    for u in range(4):
        def unit(p, u=u):  # p = (w (3), b, a (2)): unit u's contribution to the outputs, paired with r
            return (torch.tanh(x @ p[:3] + p[3])[:, None] * p[4:][None, :] * r).sum()
        p = torch.cat([W1[u], b1[u:u + 1], W2[:, u]])
        gu = torch.cat([gW1[u], gb1[u:u + 1], gW2[:, u]])
        C += float(gu @ torch.autograd.functional.hessian(unit, p) @ gu)
    assert abs(terms["C"] - C) < 1e-10 * max(1.0, abs(C))
