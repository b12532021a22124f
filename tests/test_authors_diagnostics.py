"""The authors' curvature diagnostics against dense references: Lanczos against eigvalsh,
the sharpness against the dense Hessian, the batch and dropout batch sharpness against
their expectation computed exactly over every batch and every mask."""

import itertools
import math

import pytest
import torch

import dropdyn
from dropdyn import model
from dropdyn.diagnostics import NAMES, Diagnostics, lanczos
from dropdyn.losses import LOSSES, encode


def test_lanczos_is_exact_at_full_dimension_and_converges_from_a_warm_start():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=g, dtype=torch.float64)
    A = A + A.T
    top = float(torch.linalg.eigvalsh(A)[-1])
    lam, v = lanczos(lambda x: A @ x, torch.randn(30, generator=g, dtype=torch.float64), 30)
    assert abs(lam - top) < 1e-10 * abs(top)
    assert float((A @ v - lam * v).norm()) < 1e-8 * abs(top)
    rough, v3 = lanczos(lambda x: A @ x, torch.randn(30, generator=g, dtype=torch.float64), 3)
    assert rough < top - 1e-3  # three steps from a random start have not converged
    warm, _ = lanczos(lambda x: A @ x, v + 1e-3 * torch.randn(30, generator=g, dtype=torch.float64), 3)
    assert abs(warm - top) < 1e-6 * abs(top)
    diag = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    assert lanczos(lambda x: diag @ x, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 5)[0] == 3.0  # invariant


def _system(loss: str, seed: int = 0, n: int = 3, m: int = 5, d: int = 2, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    K = 3 if loss == "cross-entropy" else 1
    X = torch.randn(n, K + d + bias, generator=g, dtype=torch.float64)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = {"squared": torch.randn(m, generator=g, dtype=torch.float64),
         "logistic": torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0][:m], dtype=torch.float64),
         "cross-entropy": torch.tensor([0.0, 2.0, 1.0, 2.0, 0.0][:m], dtype=torch.float64)}[loss]
    Y, K = encode(LOSSES[loss], "targets", y, K if K > 1 else None)
    return X, model.Design.build(Z, Y, "tanh", bias, LOSSES[loss], K)


def _dense_quotient(fn, X, n):
    g = n * torch.func.grad(fn)(X).reshape(-1)
    H = n * torch.autograd.functional.hessian(fn, X).reshape(X.numel(), X.numel())
    return float(g @ H @ g / (g @ g))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_the_sharpness_is_the_top_eigenvalue_of_the_dense_hessian(loss):
    X, design = _system(loss)
    diag = Diagnostics(design, batch_size=None, keep=0.5, samples=2, iterations=X.numel(), seed=0)
    fn = diag.loss_of(None, None)
    H = X.shape[0] * torch.autograd.functional.hessian(fn, X).reshape(X.numel(), X.numel())
    out = diag.measure(X[None])
    assert abs(float(out["sharpness"][0]) - float(torch.linalg.eigvalsh(H)[-1])) < 1e-9 * float(H.abs().max())
    # the full batch without a mask is one value: no Monte-Carlo error
    assert float(out["batch_sharpness_se"][0]) == 0 and abs(float(out["batch_sharpness"][0]) -
                                                           _dense_quotient(fn, X, X.shape[0])) < 1e-10


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_batch_and_dropout_batch_sharpness_estimate_their_exact_expectations(loss):
    """E over all C(5, 2) batches (and all 2³ masks, weighted by their probability) computed
    exactly with dense Hessians; the Monte-Carlo estimates lie within 4 standard errors."""
    X, design = _system(loss, seed=1)
    n, m, B, q = 3, 5, 2, 0.6
    diag = Diagnostics(design, batch_size=B, keep=q, samples=400, iterations=5, seed=3)
    batches = [torch.tensor(c) for c in itertools.combinations(range(m), B)]
    plain = sum(_dense_quotient(diag.loss_of(b, None), X, n) for b in batches) / len(batches)
    masked = 0.0
    for bits in itertools.product([0, 1], repeat=n):
        mask = torch.tensor(bits, dtype=torch.float64)
        if not mask.any():
            continue  # no neuron kept: no gradient; its quotient is counted as 0
        p = math.prod(q if b else 1 - q for b in bits)
        masked += p * sum(_dense_quotient(diag.loss_of(b, mask / (q * n)), X, n) for b in batches) / len(batches)
    out = diag.measure(X[None])
    for name, exact in (("batch_sharpness", plain), ("dropout_batch_sharpness", masked)):
        est, se = float(out[name][0]), float(out[f"{name}_se"][0])
        assert se > 0 and abs(est - exact) < 4 * se, (name, est, exact, se)


def test_simulate_records_the_diagnostics_on_their_schedule_and_they_change_nothing():
    g = torch.Generator().manual_seed(4)
    X, Z = torch.randn(2, 20, 4, generator=g, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, generator=g, dtype=torch.float64)
    kw = dict(lr=0.5, keep=0.7, steps=10, seed=2, batch_size=8, record_every=10)
    plain = dropdyn.simulate("dropout", X, Z, y, **kw)
    seen = dropdyn.simulate("dropout", X, Z, y, diagnostics_every=4, diagnostic_samples=3, **kw)
    assert torch.equal(plain.particles, seen.particles)
    assert seen.diagnostic_steps.tolist() == [0, 4, 8, 10] and set(seen.diagnostics) == set(NAMES)
    assert all(v.shape == (4, 2) for v in seen.diagnostics.values())
    assert bool((seen.diagnostics["sharpness"] > 0).all())
    # the bypass terms are those of the state diagnosed, on the whole training set
    from dropdyn.curvature import bypass_terms

    snap = dropdyn.simulate("dropout", X, Z, y, snapshot_every=4, **kw).snapshots
    for j in range(4):
        for r in range(2):
            want = bypass_terms(snap[j, r], Z, y, "tanh")
            for t in "ABC":
                assert abs(float(seen.diagnostics[f"bypass_{t}"][j, r]) - want[t]) <= 1e-12 * abs(want[t])
