"""Every closed form of dropdyn.model against torch.autograd, on random inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dropdyn import model

ACTS = sorted(model.ACTIVATIONS)


def random_problem(seed, R, n, m, d, bias):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(R, n, d + 1 + bias, generator=g, dtype=torch.float64)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    return X, Z, y


# (seed, R, n, m, d): drawn by hypothesis. Every activation and both bias settings are
# parametrised, not drawn: a drawn choice can go untested in a run (one in four runs missed
# a wrong identity hot path when the activation was drawn with the rest).
problems = st.tuples(st.integers(0, 10_000), st.integers(1, 3), st.integers(1, 9), st.integers(1, 8),
                     st.integers(1, 5))
every_activation = pytest.mark.parametrize("act", ACTS)
with_and_without_bias = pytest.mark.parametrize("bias", [False, True])


@every_activation
@with_and_without_bias
@settings(max_examples=10, deadline=None)
@given(problems)
def test_grad_potential_is_n_times_risk_gradient(act, bias, p):
    """Mean-field identity: ∂R/∂x_i = (1/n) ∇V[μ](x_i), R = ½‖f − y‖²."""
    seed, R, n, m, d = p
    X, Z, y = random_problem(seed, R, n, m, d, bias)
    Xg = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(model.risk(Xg, Z, y, act).sum(), Xg)
    r = model.predict(X, Z, act) - y
    closed = model.grad_potential(X, Z, r, act)
    torch.testing.assert_close(closed / n, auto, rtol=1e-10, atol=1e-12)


@every_activation
@with_and_without_bias
@settings(max_examples=10, deadline=None)
@given(problems)
def test_grad_penalty_matches_autograd(act, bias, p):
    seed, R, n, m, d = p
    X, Z, y = random_problem(seed, R, n, m, d, bias)
    Xg = X.clone().requires_grad_(True)
    phi = model.features(Xg, Z, act)
    (auto,) = torch.autograd.grad(0.5 * (phi * phi).mean(-1).sum(), Xg)
    torch.testing.assert_close(model.grad_penalty(X, Z, act), auto, rtol=1e-10, atol=1e-12)


@every_activation
@with_and_without_bias
@settings(max_examples=10, deadline=None)
@given(problems, st.floats(0.0, 2.0))
def test_fused_descent_matches_reference(act, bias, p, c):
    """The engine's fused pass = Dφᵀ(r + cφ)/m with r from weighted forward, any weights."""
    seed, R, n, m, d = p
    X, Z, y = random_problem(seed, R, n, m, d, bias)
    F = torch.rand(R, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    design = model.Design.build(Z, y, act, bias)
    a, W = design.pack(X)
    ga, gW, f = model.descent(design, a, W, F / n, penalty=c)
    r_ref = model.predict(X, Z, act, forward=F) - y
    torch.testing.assert_close(f - y, r_ref, rtol=1e-10, atol=1e-12)
    g_ref = model.grad_potential(X, Z, r_ref[:, None, :] + c * model.features(X, Z, act), act)
    torch.testing.assert_close(design.unpack(ga, gW), g_ref, rtol=1e-9, atol=1e-12)
    # the padding columns of W never receive a gradient
    assert torch.all(gW[..., d + bias:] == 0)


def test_predict_matches_explicit_sum():
    X, Z, y = random_problem(3, 1, 6, 4, 2, False)
    X = X[0]
    f = torch.zeros(4, dtype=torch.float64)
    for i in range(6):
        for j in range(4):
            f[j] += X[i, 0] * torch.tanh(X[i, 1:] @ Z[j]) / 6
    torch.testing.assert_close(model.predict(X, Z, "tanh"), f)


def test_activation_derivatives_match_autograd():
    u = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    for act in model.ACTIVATIONS.values():
        (g,) = torch.autograd.grad(act.fn(u).sum(), u)
        torch.testing.assert_close(act.deriv(u.detach()), g, msg=act.name)


def test_pack_unpack_roundtrip():
    X, Z, y = random_problem(0, 2, 5, 3, 4, True)
    design = model.Design.build(Z, y, "relu", True)
    a, W = design.pack(X)
    assert W.shape[-1] % 16 == 0 and W.is_contiguous()
    assert torch.equal(design.unpack(a, W), X)


def test_unknown_activation_is_refused():
    import pytest

    with pytest.raises(ValueError, match="activation 'swish'"):
        model.get_activation("swish")


@pytest.mark.parametrize("activation", sorted(model.ACTIVATIONS))
@pytest.mark.parametrize("loss", ["squared", "logistic", "cross-entropy"])
@pytest.mark.parametrize("m", [5, 40])
def test_descend_applies_the_descent_step(activation, loss, m):
    """descend's update equals a − s·ga, W − s·gW from descent's directions, for per-neuron
    and scalar step sizes, with the factor folded into the slope matrix (m < 2P) or applied to
    the GEMM's output (m ≥ 2P), for one output and for K outputs."""
    from dropdyn.losses import LOSSES, encode

    g = torch.Generator().manual_seed(7)
    R, n, d = 2, 9, 3 if m == 40 else 20
    K = 3 if loss == "cross-entropy" else 1
    X = torch.randn(R, n, d + K + 1, generator=g, dtype=torch.float64)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = (torch.randint(0, K, (m,), generator=g) if K > 1 else
         torch.randint(0, 2, (m,), generator=g).double() * 2 - 1)
    y, K = encode(LOSSES[loss], "y", y, K if K > 1 else None)
    design = model.Design.build(Z, y, activation, True, LOSSES[loss], outputs=K)
    assert (m < 2 * design.Z.shape[-1]) == (m == 5)
    a, W = design.pack(X)
    weights = torch.rand(R, n, generator=g, dtype=torch.float64) / n
    for scale in (0.3, torch.rand(R, n, generator=g, dtype=torch.float64)):
        done = model.descend(design, a.clone(), W.clone(), weights, scale)
        ga, gW, f = model.descent(design, a.clone(), W.clone(), weights)
        s = scale if isinstance(scale, float) else scale[..., None]
        torch.testing.assert_close(done[0], a - (s if K > 1 else scale) * ga, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(done[1], W - s * gW, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(done[2], f, rtol=0, atol=0)
