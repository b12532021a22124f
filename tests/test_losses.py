"""Losses and minibatches of the particle engine: closed forms against autograd for every
loss × activation × bias × dtype; whole runs against an independent implementation of the
phase paper's authors' update (autograd through a forward pass with mask F and a backward
pass with mask B), full batch and minibatch, for every variant they run."""

import pytest
import torch

import dropdyn
from dropdyn import model
from dropdyn._checks import InputError
from dropdyn.engine import BATCH_SEED, FORWARD_SEED, BatchStream
from dropdyn.losses import LOSSES, encode
from dropdyn.masks import MaskStream, draw_masks

F_ = torch.nn.functional


def _targets(loss: str, m: int, K: int, g: torch.Generator) -> torch.Tensor:
    if loss == "squared":
        return torch.randn(m, generator=g, dtype=torch.float64)
    if loss == "logistic":
        return torch.randint(0, 2, (m,), generator=g).double() * 2 - 1
    return torch.randint(0, K, (m,), generator=g).double()


def _loss(loss: str, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-sample loss written with torch.nn.functional, as a user would."""
    if loss == "squared":
        return 0.5 * F_.mse_loss(f, y.expand(f.shape), reduction="none")
    if loss == "logistic":
        return F_.binary_cross_entropy_with_logits(f, ((y + 1) / 2).expand(f.shape), reduction="none")
    return F_.cross_entropy(f.transpose(-1, -2) if f.dim() == 3 else f, y.long().expand(f.shape[:-1]),
                            reduction="none")


def _network(X: torch.Tensor, Z: torch.Tensor, K: int, activation: str, F: torch.Tensor, B: torch.Tensor):
    """f = (1/n) Σ_i F_i φ(x_i) in value, with the gradient of (1/n) Σ_i B_i φ(x_i): the
    authors' forward mask F and backward mask B. X ``(R, n, K + d [+ 1])``."""
    d = Z.shape[1]
    a, w = X[..., :K], X[..., K:K + d]
    u = w @ Z.T + (X[..., K + d, None] if X.shape[-1] == K + d + 1 else 0)
    phi = model.get_activation(activation).fn(u)[..., None] * a[..., None, :]  # (R, n, m, K)
    mixed = F[..., None, None] * phi.detach() + B[..., None, None] * (phi - phi.detach())
    f = mixed.mean(-3)
    return f[..., 0] if K == 1 else f


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", sorted(model.ACTIVATIONS))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_the_step_direction_is_the_gradient_of_the_loss(loss, activation, bias, dtype):
    """descent's direction g_i times F_i/n is ∂/∂x_i of the mean loss of f = (1/n) Σ F_j φ_j."""
    g = torch.Generator().manual_seed(hash((loss, activation, bias)) % 2**31)
    R, n, m, d, K = 2, 7, 9, 3, (3 if loss == "cross-entropy" else 1)
    X = torch.randn(R, n, K + d + bias, generator=g, dtype=torch.float64)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = _targets(loss, m, K, g)
    F = torch.rand(R, n, generator=g, dtype=torch.float64) * 2
    Y, K = encode(LOSSES[loss], "targets", y, K if K > 1 else None)
    design = model.Design.build(Z.to(dtype), Y.to(dtype), activation, bias, LOSSES[loss], K)
    a, W = design.pack(X.to(dtype))
    ga, gW, f = model.descent(design, a, W, (F / n).to(dtype))
    Xg = X.clone().requires_grad_()
    fr = _network(Xg, Z, K, activation, F, F)
    _loss(loss, fr, y).mean(-1).sum().backward()
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(f.double(), fr.detach(), **tol)
    torch.testing.assert_close(design.unpack(ga, gW).double() * (F / n)[..., None], Xg.grad, **tol)
    torch.testing.assert_close(LOSSES[loss].risk(f, design.y).double(), _loss(loss, fr.detach(), y).mean(-1), **tol)


def authors_run(variant, X, Z, y, *, K, activation, lr, keep, masks, forward_masks, batches, loss):
    """The authors' update, written from its equations with autograd: each step
    X ← X − τ n ∇_X mean_{j ∈ batch} ℓ(f(z_j), y_j), f's value taken with forward mask F and its
    gradient with backward mask B (dropout F = B = M/q; RaM F = 1, B = M/q; forward-only
    F = M/q, B = 1; independent F = M'/q, B = M/q; GD F = B = 1)."""
    R, n = X.shape[:2]
    ones = torch.ones(R, n, dtype=X.dtype)
    for k in range(masks.shape[0]):
        M, M2 = masks[k].double() / keep, forward_masks[k].double() / keep
        F, B = {"dropout": (M, M), "ram": (ones, M), "forward-only": (M, ones), "independent": (M2, M),
                "gd": (ones, ones)}[variant]
        rows = slice(None) if batches is None else batches[k]
        Xg = X.clone().requires_grad_()
        f = _network(Xg, Z[rows], K, activation, F, B)
        _loss(loss, f, y[rows]).mean(-1).sum().backward()
        X = X - lr * n * Xg.grad
    return X


def _coupled(variant, X, Z, y, *, K, activation, lr, keep, steps, seed, loss, batch_size=None):
    """dropdyn's run and the authors' on the same particles, data, masks and batches."""
    R, n = X.shape[:2]
    masks = draw_masks(keep, steps, (R, n), seed=seed)
    forward_masks = MaskStream(keep, (R, n), seed + FORWARD_SEED).take(steps)
    batches = None
    if batch_size is not None:
        stream = BatchStream(Z.shape[0], (1, batch_size), seed + BATCH_SEED, "cpu")
        batches = torch.stack([stream.next()[0] for _ in range(steps)])
    ours = dropdyn.simulate(variant, X, Z, y, lr=lr, keep=keep, steps=steps, activation=activation, loss=loss,
                            classes=K if K > 1 else None, seed=seed, batches=batches, record_every=steps)
    theirs = authors_run(variant, X, Z, y, K=K, activation=activation, lr=lr, keep=keep, masks=masks,
                         forward_masks=forward_masks, batches=batches, loss=loss)
    return ours, theirs


@pytest.mark.parametrize("variant", ["gd", "dropout", "ram", "independent"])
def test_the_figure_2_setting_is_the_authors_update(variant):
    """The phase paper's Figure 2 (reduced: 100 samples, width 200): d = 20, a ReLU teacher of
    15 neurons, ReLU student w ~ N(0, I/d), a ~ N(0, 1), squared loss, τ = 0.5, q = 0.7, 1000
    full-batch steps; dropdyn's particles equal the authors' update to float64 rounding."""
    g = torch.Generator().manual_seed(20)
    d, m, n = 20, 100, 200
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    Wt, at = torch.randn(15, d, generator=g, dtype=torch.float64) / d**0.5, torch.randn(15, generator=g,
                                                                                          dtype=torch.float64)
    y = torch.relu(Z @ Wt.T) @ at / 15**0.5
    X = torch.cat([torch.randn(1, n, 1, generator=g, dtype=torch.float64),
                   torch.randn(1, n, d, generator=g, dtype=torch.float64) / d**0.5], -1)
    ours, theirs = _coupled(variant, X, Z, y, K=1, activation="relu", lr=0.5, keep=0.7, steps=1000, seed=3,
                            loss="squared")
    assert ours.diverged_at_step is None and float(ours.risk[-1]) < 0.5 * float(ours.risk[0])
    scale = float(theirs.abs().max())
    assert float((ours.particles - theirs).abs().max()) < 1e-9 * scale


@pytest.mark.parametrize("loss", ["logistic", "cross-entropy"])
@pytest.mark.parametrize("variant", ["gd", "dropout", "ram", "forward-only", "independent"])
def test_an_sgd_run_is_the_authors_update(variant, loss):
    """The Figure 3 setting, reduced (d = 30, 200 samples, width 120, batch 16, τ = 0.25,
    q = 0.8, 150 steps, ReLU): minibatch SGD with the seed's batches and masks equals the
    authors' update, for the logistic loss (±1 targets) and cross-entropy with 3 classes."""
    g = torch.Generator().manual_seed(30)
    d, m, n, K = 30, 200, 120, (3 if loss == "cross-entropy" else 1)
    Z = torch.rand(m, d, generator=g, dtype=torch.float64)
    y = _targets(loss, m, K, g)
    X = torch.cat([torch.randn(1, n, K, generator=g, dtype=torch.float64),
                   torch.randn(1, n, d, generator=g, dtype=torch.float64) / d**0.5], -1)
    ours, theirs = _coupled(variant, X, Z, y, K=K, activation="relu", lr=0.25, keep=0.8, steps=150, seed=4,
                            loss=loss, batch_size=16)
    assert ours.diverged_at_step is None and ours.info["batch_size"] == 16
    assert float((ours.particles - theirs).abs().max()) < 1e-10 * float(theirs.abs().max())
    assert ours.accuracy is not None and 0 <= float(ours.accuracy[-1]) <= 1


def test_one_seed_one_batch_stream_and_a_full_batch_run_is_unchanged():
    """Variants run with one seed see the same batches (a GD run and a dropout run at q = 1
    are the same run); the full batch is what it was, and the records use every sample."""
    g = torch.Generator().manual_seed(1)
    X, Z = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.randn(60, generator=g, dtype=torch.float64)
    kw = dict(lr=0.3, steps=20, seed=9, batch_size=8)
    a = dropdyn.simulate("gd", X, Z, y, keep=1.0, **kw)
    b = dropdyn.simulate("dropout", X, Z, y, keep=1.0, **kw)
    assert torch.equal(a.particles, b.particles)
    c = dropdyn.simulate("gd", X, Z, y, keep=1.0, **{**kw, "seed": 10})
    assert not torch.equal(a.particles, c.particles)
    full = dropdyn.simulate("gd", X, Z, y, keep=1.0, lr=0.3, steps=20, record_every=20)
    given = dropdyn.simulate("gd", X, Z, y, keep=1.0, lr=0.3, steps=20, record_every=20,
                             batches=torch.arange(60).expand(20, 60))
    assert torch.allclose(full.particles, given.particles, rtol=0, atol=1e-13)
    assert float(full.risk[-1]) == float(dropdyn.engine.full_risk(*_full(full.particles, Z, y)))


def _full(X, Z, y):
    design = model.Design.build(Z, y, "tanh", False)
    return (design, *design.pack(X[None]))


def test_batch_stream_draws_distinct_samples():
    s = BatchStream(10, (3, 10), 0, "cpu")
    for _ in range(5):
        assert all(sorted(row.tolist()) == list(range(10)) for row in s.next())


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=61), "batch_size 61 exceeds the 60 training samples"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batches=torch.full((3, 4), 60)), "batches hold a sample index outside 0 … 59"),
    (dict(batches=torch.zeros(2, 4, dtype=torch.long)), "batches must have shape \\(3, B\\)"),
    (dict(batches=torch.zeros(3, 4)), "batches must be an integer tensor"),
    (dict(loss="hinge"), "unknown loss 'hinge'"),
    (dict(loss="logistic"), "the logistic loss takes targets of -1 or \\+1; got 0.5"),
    (dict(loss="cross-entropy"), "class indices"),
    (dict(variant="penalty", loss="logistic", y=1.0), "the penalty variant is the expected dropout step of the "
                                                      "squared loss"),
    (dict(loss="logistic", y=1.0, backend="fused"), "backend 'fused' runs the squared loss on the full batch"),
    (dict(batch_size=5, graph=True), "graph=True runs the squared loss on the full batch"),
    (dict(variant=dropdyn.engine.Rule(False, True, beta=0.5), batch_size=5), "the critical rule of phase IV is a "
                                                                             "full-batch limit"),
])
def test_bad_losses_and_batches_are_refused_in_one_line(kw, match):
    g = torch.Generator().manual_seed(2)
    X, Z = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.full((60,), kw.pop("y", 0.5), dtype=torch.float64)
    variant = kw.pop("variant", "gd")
    with pytest.raises(InputError, match=match):
        dropdyn.simulate(variant, X, Z, y, lr=0.1, keep=0.5, steps=3, **kw)


def test_cross_entropy_classes_and_shapes_are_checked():
    g = torch.Generator().manual_seed(5)
    Z, y = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.arange(30).double() % 4
    X = torch.randn(20, 4 + 3, generator=g, dtype=torch.float64)
    run = dropdyn.simulate("dropout", X, Z, y, lr=0.5, keep=0.5, steps=5, loss="cross-entropy", probe_inputs=Z)
    assert run.particles.shape == (20, 7) and run.outputs.shape == (6, 30, 4) and run.info["outputs"] == 4
    with pytest.raises(InputError, match="targets hold class 3, out of range for 3 classes"):
        dropdyn.simulate("dropout", X, Z, y, lr=0.5, keep=0.5, steps=5, loss="cross-entropy", classes=3)
    with pytest.raises(InputError, match="p must be 7 \\(a ∈ R\\^4, w\\) or 8"):
        dropdyn.simulate("dropout", X[:, :5], Z, y, lr=0.5, keep=0.5, steps=5, loss="cross-entropy")
    with pytest.raises(InputError, match="test_targets hold class 4, out of range for 4 classes"):
        dropdyn.simulate("gd", X, Z, y, lr=0.5, keep=1.0, steps=1, loss="cross-entropy", test_inputs=Z,
                         test_targets=y + 1)


def test_the_papers_data_and_their_bad_settings():
    """relu_teacher's targets are Σ_k a*_k relu(w*_k·z)/√k; paper-mnist refuses what it cannot run."""
    from dropdyn.data import raw_mnist_pair, relu_teacher
    from dropdyn.lab.experiment import get

    task = relu_teacher(dim=4, teacher_width=3, n_train=5, n_test=2, generator=torch.Generator().manual_seed(0))
    a, w = task.teacher[:, 0] / 3**0.5, task.teacher[:, 1:]
    assert torch.allclose(task.targets, torch.relu(task.inputs @ w.T) @ a / 3**0.5, rtol=1e-12)
    split, vx, vy = raw_mnist_pair((4, 7), validation=100, generator=torch.Generator().manual_seed(0))
    assert vx.shape == (100, 784) and float(split.inputs.max()) <= 1 and float(split.inputs.min()) >= 0
    assert set(split.targets.tolist()) == {-1.0, 1.0}
    with pytest.raises(InputError, match="leave none to train on"):
        raw_mnist_pair((4, 7), validation=5000, generator=torch.Generator())
    with pytest.raises(InputError, match="full is the paper's size on the full MNIST: give --source idx"):
        get("paper-mnist").resolve({"full": True})
    with pytest.raises(InputError, match="repeats must be an integer >= 2"):
        get("paper-teacher-student").resolve({"repeats": 1})


def test_predict_gives_the_engines_outputs_for_every_loss():
    """model.predict (the readable reference, K outputs included) is the output the engine
    records on its probe inputs."""
    g = torch.Generator().manual_seed(8)
    Z = torch.randn(12, 3, generator=g, dtype=torch.float64)
    for loss, K, y in (("logistic", 1, torch.ones(12, dtype=torch.float64)),
                       ("cross-entropy", 4, torch.arange(12).double() % 4)):
        X = torch.randn(2, 15, K + 3 + 1, generator=g, dtype=torch.float64)
        run = dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=1.0, steps=0, loss=loss, probe_inputs=Z)
        torch.testing.assert_close(run.outputs[0], model.predict(X, Z, "tanh", outputs=K), rtol=1e-12, atol=1e-14)
        F = torch.rand(2, 15, generator=g, dtype=torch.float64)
        want = (model.features(X, Z, "tanh", K) * (F[..., None, None] if K > 1 else F[..., None])).mean(-3 if K > 1
                                                                                                    else -2)
        torch.testing.assert_close(model.predict(X, Z, "tanh", forward=F, outputs=K), want)
