"""SME of dropout: modified loss, exact noise covariance, integrators (THEORY.md §3).

Every closed form is checked against an independent computation: autograd, or the
exact mask distribution enumerated over all 2^width masks, or Monte Carlo."""

import itertools
import math

import pytest
import torch

from dropdyn import sme
from dropdyn.sme_dynamics import simulate_sme, sme_step

f64 = torch.float64


def _problem(width=4, d=3, N=7, seed=0, replicas=None):
    g = torch.Generator().manual_seed(seed)
    shape = (width, d + 1) if replicas is None else (replicas, width, d + 1)
    theta = torch.randn(*shape, generator=g, dtype=f64)
    return theta, torch.randn(N, d, generator=g, dtype=f64), torch.randn(N, generator=g, dtype=f64)


def _enumerate(theta, X, y, keep):
    """Exact mean and covariance of the dropout gradient over all 2^width masks."""
    m = theta.shape[0]
    grads, weights = [], []
    for bits in itertools.product([0.0, 1.0], repeat=m):
        b = torch.tensor(bits, dtype=f64)
        grads.append(sme.dropout_gradient(theta, X, y, b / keep).reshape(-1))
        weights.append(keep ** b.sum() * (1 - keep) ** (m - b.sum()))
    G, W = torch.stack(grads), torch.stack(weights)
    mean = (W[:, None] * G).sum(0)
    C = G - mean
    return mean, (W[:, None, None] * C[:, :, None] * C[:, None, :]).sum(0)


@pytest.mark.parametrize("keep", [0.3, 1.0])
def test_risk_and_modified_loss_against_sums_and_the_mask_average(keep):
    """R_S(θ) = (1/2N) Σ_i (Σ_r a_r σ(w_r·x_i) − y_i)², by explicit sums; L_S (eq. 7) is the
    exact average of the dropout risk R_S^drop(θ; δ) over all 2^width masks (= R_S at p = 1)."""
    theta, X, y = _problem(width=5, seed=13)
    N = len(y)
    f = [sum(float(theta[r, 0]) * math.tanh(float(theta[r, 1:] @ X[i])) for r in range(5)) for i in range(N)]
    R = sum((f[i] - float(y[i])) ** 2 for i in range(N)) / (2 * N)
    assert abs(float(sme.risk_standard(theta, X, y)) - R) < 1e-13
    L = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=5):
        b = torch.tensor(bits, dtype=f64)
        r_drop = sme.predict_standard(theta, X, mask=b / keep) - y
        L += float(keep ** b.sum() * (1 - keep) ** (5 - b.sum())) * float(0.5 * r_drop.square().mean())
    assert abs(float(sme.modified_loss(theta, X, y, keep)) - L) < 1e-12 * L
    assert (keep == 1.0) == (abs(L - R) < 1e-13)


def test_mask_moments():
    for p in (0.1, 0.5, 0.9, 1.0):
        eps = torch.tensor([1 / p - 1, -1.0], dtype=f64)
        w = torch.tensor([p, 1 - p], dtype=f64)
        c2, kappa = sme.mask_moments(p)
        assert math.isclose(float((w * eps**2).sum()), c2, abs_tol=1e-14)
        if p < 1:
            assert math.isclose(float((w * eps**3).sum()) / c2, kappa, rel_tol=1e-12)
        # the two-point identity ε² = c₂ + κ ε that the factorisation rests on
        assert torch.allclose(eps**2, c2 + kappa * eps) or p == 1


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus"])
def test_gradients_against_autograd(activation):
    theta, X, y = _problem(replicas=3)
    t = theta.clone().requires_grad_()
    (g,) = torch.autograd.grad(sme.modified_loss(t, X, y, 0.3, activation).sum(), t)
    assert torch.allclose(g, sme.modified_loss_grad(theta, X, y, 0.3, activation), atol=1e-13)
    mask = (torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=f64) < 0.5) / 0.5
    drop = 0.5 * (sme.predict_standard(t, X, activation, mask) - y).square().mean(-1)
    (g,) = torch.autograd.grad(drop.sum(), t)
    assert torch.allclose(g, sme.dropout_gradient(theta, X, y, mask, activation), atol=1e-13)


@pytest.mark.parametrize("activation", ["tanh", "erf"])
def test_hvp_and_order2_drift_against_autograd(activation):
    theta, X, y = _problem(replicas=2)
    v = torch.randn_like(theta)
    ref = torch.func.jvp(lambda t: sme.modified_loss_grad(t, X, y, 0.4, activation), (theta,), (v,))[1]
    assert torch.allclose(sme.hessian_vector_product(theta, X, y, 0.4, v, activation), ref, atol=1e-12)
    t = theta.clone().requires_grad_()
    L = sme.modified_loss(t, X, y, 0.4, activation)
    (g,) = torch.autograd.grad(L.sum(), t, create_graph=True)
    (b2,) = torch.autograd.grad((L + 0.3 / 4 * g.square().sum((-1, -2))).sum(), t)
    assert torch.allclose(sme.order2_drift(theta, X, y, 0.4, 0.3, activation), -b2, atol=1e-12)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8, 1.0])
def test_mean_and_covariance_exact_over_all_masks(keep):
    theta, X, y = _problem(width=5)
    mean, C = _enumerate(theta, X, y, keep)
    assert torch.allclose(mean, sme.modified_loss_grad(theta, X, y, keep).reshape(-1), atol=1e-12)
    S = sme.noise_covariance(theta, X, y, keep)
    assert torch.allclose(S.to_dense(), C, atol=1e-12)
    V = torch.randn(3, 5 * 4, generator=torch.Generator().manual_seed(2), dtype=f64)
    for v in V:
        assert torch.allclose(S @ v, C @ v, atol=1e-12)


def test_matvec_unbiased_against_monte_carlo():
    theta, X, y = _problem(width=6, seed=3)
    keep, n = 0.6, 40_000
    g = torch.Generator().manual_seed(4)
    masks = (torch.rand(n, 6, generator=g, dtype=f64) < keep) / keep
    G = sme.dropout_gradient(theta.expand(n, *theta.shape), X, y, masks).reshape(n, -1)
    C = torch.cov(G.T)
    v = torch.randn(theta.numel(), generator=g, dtype=f64)
    S = sme.noise_covariance(theta, X, y, keep)
    # per-entry standard error of the sample covariance applied to v
    proj = (G - G.mean(0)) * ((G - G.mean(0)) @ v)[:, None]
    se = proj.std(0) / n**0.5
    assert ((C @ v - S @ v).abs() <= 5 * se + 1e-12).all()


def test_factor_matches_dense_square_root_and_samples():
    theta, X, y = _problem(width=5, seed=5)
    S = sme.noise_covariance(theta, X, y, 0.5)
    dense = S.to_dense()
    root = sme.dense_sqrt(dense)
    F = S.factor_dense()
    assert F.shape == (20, 5 + 10)
    assert torch.allclose(root @ root, F @ F.T, atol=1e-12)  # same Gaussian law: Σ^{1/2} z ~ F z
    batched = sme.noise_covariance(theta.expand(30_000, 5, 4), X, y, 0.5)
    Z = batched.sample(torch.Generator().manual_seed(6)).reshape(30_000, -1)
    assert (torch.cov(Z.T) - dense).abs().max() < 0.05 * dense.abs().max()


def test_batched_operator_is_per_replica():
    theta, X, y = _problem(width=4, replicas=3, seed=7)
    v = torch.randn_like(theta)
    out = sme.noise_covariance(theta, X, y, 0.7) @ v
    for r in range(3):
        assert torch.allclose(out[r], sme.noise_covariance(theta[r], X, y, 0.7) @ v[r], atol=1e-12)


def test_bad_input_errors():
    theta, X, y = _problem()
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got 0"):
        sme.noise_covariance(theta, X, y, 0)
    with pytest.raises(ValueError, match="keep must be in"):
        sme.modified_loss(theta, X, y, 1.5)
    bad = theta.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="theta contains 1 non-finite"):
        sme.noise_covariance(bad, X, y, 0.5)
    with pytest.raises(ValueError, match=r"theta must be \(..., width, d \+ 1\)"):
        sme.noise_covariance(theta[:, :3], X, y, 0.5)
    with pytest.raises(ValueError, match=r"targets must be \(N,\)"):
        sme.noise_covariance(theta, X, y[:3], 0.5)
    with pytest.raises(ValueError, match=r"would need .* GiB"):
        sme.noise_covariance(theta, X, y, 0.5).to_dense(limit_bytes=100)
    with pytest.raises(ValueError, match="substep 0.03 must divide the learning rate 0.1"):
        sme.check_substeps(0.1, 0.03)
    with pytest.raises(ValueError, match=r"substep 0.3 must divide the learning rate 0.1 \(lr / substep = 0.333333\)"):
        sme.check_substeps(0.1, 0.3)
    assert [sme.check_substeps(0.1, h) for h in (0.1, 0.025, 0.1 / 3)] == [1, 4, 3]
    with pytest.raises(ValueError, match="lr must be a finite positive number"):
        simulate_sme("sme1", theta, X, y, lr=-0.1, keep=0.5, steps=1)
    with pytest.raises(ValueError, match="unknown dynamics 'sgd'"):
        simulate_sme("sgd", theta, X, y, lr=0.1, keep=0.5, steps=1)


def test_dense_limits_are_the_bytes_of_sigma_and_of_its_factor():
    """width 5, d = 3: D = 20; F is D × (5 + 10) = 300 entries, Σ is D × D = 400 (float64:
    2,400 and 3,200 bytes). Each is built at exactly its size and refused one byte below."""
    theta, X, y = _problem(width=5, d=3, seed=14)
    S = sme.noise_covariance(theta, X, y, 0.5)
    assert S.factor_dense(limit_bytes=2400).shape == (20, 15) and S.to_dense(limit_bytes=3200).shape == (20, 20)
    with pytest.raises(ValueError, match=r"dense F for D = 20 would need"):
        S.factor_dense(limit_bytes=2399)
    with pytest.raises(ValueError, match=r"dense Σ for D = 20 would need"):
        S.to_dense(limit_bytes=3199)


def test_simulation_deterministic_and_limits():
    theta, X, y = _problem(width=6, seed=8)
    run = [simulate_sme("sme2", theta, X, y, lr=0.1, keep=0.5, steps=5, replicas=4, substep=0.025,
                    generator=torch.Generator().manual_seed(0)).particles for _ in range(2)]
    assert torch.equal(run[0], run[1])
    # keep = 1: no noise; dropout = GD on R_S; the order-1 SME = GD with step h = η/m
    gd = theta[None]
    for _ in range(3):
        gd = gd - 0.1 * sme.modified_loss_grad(gd, X, y, 1.0)
    drop = simulate_sme("dropout", theta, X, y, lr=0.1, keep=1.0, steps=3, replicas=2).particles
    assert torch.allclose(drop, gd.expand(2, -1, -1), atol=1e-13)
    assert torch.allclose(simulate_sme("gd", theta, X, y, lr=0.1, keep=1.0, steps=3).particles, gd, atol=1e-13)
    flow = theta[None]
    for _ in range(6):
        flow = flow - 0.05 * sme.modified_loss_grad(flow, X, y, 1.0)
    sde = simulate_sme("sme1", theta, X, y, lr=0.1, keep=1.0, steps=3, substep=0.05).particles
    assert torch.allclose(sde, flow, atol=1e-13)


def test_trajectory_records_the_replica_mean_variance_and_monte_carlo_error():
    """mean = (1/R) Σ_r θ_r, variance = Σ_coords (1/(R−1)) Σ_r (θ_r − mean)², and
    mean_error = √(variance / R), at the last record (the final θ)."""
    theta, X, y = _problem(width=3, seed=12)
    R = 7
    tr = simulate_sme("dropout", theta, X, y, lr=0.1, keep=0.5, steps=4, replicas=R, seed=2)
    th = tr.particles.reshape(R, -1).tolist()
    mean = [sum(t[k] for t in th) / R for k in range(len(th[0]))]
    var = sum(sum((t[k] - mean[k]) ** 2 for t in th) / (R - 1) for k in range(len(mean)))
    torch.testing.assert_close(tr.mean[-1].reshape(-1), torch.tensor(mean, dtype=f64), rtol=1e-12, atol=1e-14)
    assert var > 0 and abs(float(tr.variance[-1]) - var) < 1e-12 * var
    assert abs(float(tr.mean_error[-1]) - (var / R) ** 0.5) < 1e-12 * (var / R) ** 0.5


def test_one_step_moments_of_sme_match_dropout():
    """With one Euler–Maruyama step per dropout step, the SME increment has exactly the
    dropout increment's mean −η∇L_S and covariance η²Σ; check both by Monte Carlo, for
    the matrix-free and the dense diffusion."""
    theta, X, y = _problem(width=3, d=2, N=5, seed=9)
    lr, keep, n = 0.2, 0.5, 20_000
    mean = -lr * sme.modified_loss_grad(theta, X, y, keep).reshape(-1)
    cov = lr**2 * sme.noise_covariance(theta, X, y, keep).to_dense()
    th = theta.expand(n, *theta.shape)
    for dyn, diffusion in (("dropout", "factor"), ("sme1", "factor"), ("sme1", "dense")):
        m = 400 if diffusion == "dense" else n
        inc = (sme_step(dyn, th[:m], X, y, lr=lr, keep=keep, diffusion=diffusion,
                    generator=torch.Generator().manual_seed(10)) - th[:m]).reshape(m, -1)
        se = cov.diagonal().sqrt() / m**0.5
        assert ((inc.mean(0) - mean).abs() <= 5 * se + 1e-12).all(), dyn
        if diffusion == "factor":
            assert (torch.cov(inc.T) - cov).abs().max() < 0.06 * cov.abs().max(), dyn


def test_divergence_is_recorded_and_records_kept():
    theta, X, y = _problem(width=4, seed=11)
    tr = simulate_sme("sme1", theta * 3, X, y, lr=50.0, keep=0.3, steps=200, replicas=3, substep=25.0,
                  generator=torch.Generator().manual_seed(0))
    assert tr.diverged_at_step is not None and tr.diverged_at_step <= 200
    assert len(tr.times) == len(tr.observed["train_risk"]) and torch.isfinite(tr.mean).all()
    assert tr.steps[-1] == tr.diverged_at_step - 1


@pytest.mark.parametrize("dynamics", ["dropout", "sme1", "sme2", "gd"])
@pytest.mark.parametrize("lr", [0.2, 50.0])
def test_checking_divergence_every_few_steps_changes_nothing(dynamics, lr):
    # the GPU default (the host reads the test every 16 steps, the device keeps the last good θ)
    # must give the run that checks every step, bit for bit, diverging or not
    theta, X, y = _problem(width=4, seed=11)
    runs = [simulate_sme(dynamics, theta * 3, X, y, lr=lr, keep=0.3, steps=60, replicas=3, substep=lr / 2,
                         record_every=7, seed=5, check_every=c) for c in (1, 8, 100)]
    if lr == 50.0:
        assert runs[0].diverged_at_step is not None
    for other in runs[1:]:
        assert other.diverged_at_step == runs[0].diverged_at_step
        for name in ("steps", "times", "risk", "mean", "variance", "particles"):
            assert torch.equal(getattr(other, name), getattr(runs[0], name)), name


def test_sme_dropout_draws_its_masks_from_a_mask_stream():
    """simulate_sme's dropout takes its masks from a MaskStream on its generator: the run
    equals θ ← θ − η ∇R^drop(θ; mask/q) with the masks of MaskStream(keep, (R, width), seed)."""
    from dropdyn import MaskStream

    theta, X, y = _problem(width=4, seed=5)
    R, lr, keep = 3, 0.1, 0.6
    tr = simulate_sme("dropout", theta, X, y, lr=lr, keep=keep, steps=5, replicas=R, seed=8)
    stream, th = MaskStream(keep, (R, theta.shape[0]), seed=8), theta.expand(R, *theta.shape).clone()
    for _ in range(5):
        th = th - lr * sme.dropout_gradient(th, X, y, stream.next().to(th.dtype) / keep)
    assert torch.equal(tr.particles, th)


def test_a_non_smooth_activation_makes_the_sme_say_so():
    theta, X, y = _problem(width=4, seed=21)
    with pytest.warns(UserWarning, match="activation 'relu' is not smooth"):
        tr = simulate_sme("sme1", theta, X, y, lr=0.1, keep=0.5, steps=2, replicas=2, seed=0, activation="relu")
    assert "not smooth" in tr.info["caveat"]
    smooth = simulate_sme("sme1", theta, X, y, lr=0.1, keep=0.5, steps=2, replicas=2, seed=0, activation="tanh")
    plain = simulate_sme("dropout", theta, X, y, lr=0.1, keep=0.5, steps=2, replicas=2, seed=0, activation="relu")
    assert smooth.info["caveat"] is None and plain.info["caveat"] is None  # dropout itself assumes nothing
