"""The particle engine: variants against their definitions (THEORY.md §1)."""

import itertools
import math

import pytest
import torch

from dropdyn import VARIANTS, MaskStream, draw_masks, simulate
from dropdyn.engine import FORWARD_SEED
from dropdyn.model import features, grad_potential, predict


def problem(seed=0, n=6, m=5, d=3, R=None, bias=False):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if R is None else (R, n)
    X = torch.randn(*shape, d + 1 + bias, generator=g, dtype=torch.float64)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    return X, Z, y


def reference_step(variant, X, Z, y, lr, q, mask, act="tanh", forward_mask=None):
    """THEORY.md §1: X_i ← X_i − τ B_i Dφ(X_i)ᵀ(r + c φ(X_i))/m, r = (1/n)Σ F_j φ(X_j) − y
    (``forward_mask``: the independent variant's forward draw)."""
    n = X.shape[-2]
    mult = mask.to(X.dtype) / q
    ones = torch.ones_like(mult)
    F = mult if variant in ("dropout", "forward-only") else ones
    if variant == "independent":
        F = forward_mask.to(X.dtype) / q
    B = mult if variant in ("dropout", "ram", "independent") else ones
    c = (1 - q) / (n * q) if variant == "penalty" else 0.0
    r = predict(X, Z, act, forward=F) - y
    res = r[..., None, :] + c * features(X, Z, act)
    return X - lr * B[..., None] * grad_potential(X, Z, res, act)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bias", [False, True])
def test_one_step_matches_definition(variant, bias, compaction):
    X, Z, y = problem(1, bias=bias)
    q, lr = 0.4, 0.3
    masks = draw_masks(q, 1, (6,), seed=4)
    assert 0 < int(masks.sum()) < 6  # both kept and dropped neurons
    out = simulate(variant, X, Z, y, lr=lr, keep=q, steps=1, masks=masks)
    assert out.info["compact"] == (compaction and variant == "dropout")
    forward = MaskStream(q, (1, 6), seed=FORWARD_SEED).next()[0]  # seed 0's forward stream
    torch.testing.assert_close(out.particles, reference_step(variant, X, Z, y, lr, q, masks[0], forward_mask=forward),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_keep_one_is_gd_exactly(variant, activation):
    X, Z, y = problem(2, n=40, R=3)
    gd = simulate("gd", X, Z, y, lr=0.2, keep=1.0, steps=25, activation=activation)
    v = simulate(variant, X, Z, y, lr=0.2, keep=1.0, steps=25, activation=activation)
    assert torch.equal(v.particles, gd.particles)
    assert torch.equal(v.risk, gd.risk)


def test_penalty_gd_is_the_exact_mask_average_of_dropout():
    """E over all 2^n masks of one dropout step = one penalty-GD step (n = 5, exact)."""
    X, Z, y = problem(3, n=5)
    q, lr = 0.35, 0.5
    expected = torch.zeros_like(X)
    for bits in itertools.product([False, True], repeat=5):
        mask = torch.tensor(bits)
        k = int(mask.sum())
        prob = q**k * (1 - q) ** (5 - k)
        expected += prob * simulate("dropout", X, Z, y, lr=lr, keep=q, steps=1, masks=mask[None]).particles
    penalty = simulate("penalty", X, Z, y, lr=lr, keep=q, steps=1).particles
    torch.testing.assert_close(expected, penalty, rtol=1e-12, atol=1e-13)


def test_penalty_gd_is_the_monte_carlo_mask_average_of_dropout():
    """The same with sampled masks over 40,000 replicas (batched path), within 5 s.e."""
    X, Z, y = problem(4, n=8)
    R, q, lr = 40_000, 0.5, 0.5
    out = simulate("dropout", X.expand(R, 8, 4).clone(), Z, y, lr=lr, keep=q, steps=1, seed=11)
    mean = out.particles.mean(0)
    se = out.particles.std(0) / math.sqrt(R)
    penalty = simulate("penalty", X, Z, y, lr=lr, keep=q, steps=1).particles
    assert torch.all((mean - penalty).abs() <= 5 * se + 1e-12)


def test_same_seed_couples_variants_and_equals_explicit_masks(compaction):
    X, Z, y = problem(5, n=30)
    masks = draw_masks(0.5, 10, (30,), seed=9)
    for v in ("dropout", "ram", "forward-only"):
        a = simulate(v, X, Z, y, lr=0.1, keep=0.5, steps=10, seed=9)
        b = simulate(v, X, Z, y, lr=0.1, keep=0.5, steps=10, masks=masks)
        assert torch.equal(a.particles, b.particles), v
    # the defaults agree too: simulate's seed 0 draws draw_masks's (and MaskStream's) masks
    default = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=10)
    for masks in (draw_masks(0.5, 10, (30,)), MaskStream(0.5, (30,)).take(10)):
        assert torch.equal(default.particles, simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=10,
                                                       masks=masks).particles)


def test_replicas_equal_sequential_runs(compaction):
    X, Z, y = problem(6, n=20, R=4)
    masks = draw_masks(0.3, 15, (4, 20), seed=1)
    batched = simulate("dropout", X, Z, y, lr=0.2, keep=0.3, steps=15, masks=masks)
    for r in range(4):
        single = simulate("dropout", X[r], Z, y, lr=0.2, keep=0.3, steps=15, masks=masks[:, r])
        torch.testing.assert_close(batched.particles[r], single.particles, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched.risk[:, r], single.risk, rtol=1e-12, atol=1e-12)
    # (steps, width) masks are shared by every replica
    shared = simulate("dropout", X, Z, y, lr=0.2, keep=0.3, steps=15, masks=masks[:, 0])
    single = simulate("dropout", X[2], Z, y, lr=0.2, keep=0.3, steps=15, masks=masks[:, 0])
    torch.testing.assert_close(shared.particles[2], single.particles, rtol=1e-12, atol=1e-12)


def test_deterministic_bit_for_bit(compaction):
    X, Z, y = problem(7, n=50)
    a = simulate("dropout", X, Z, y, lr=0.1, keep=0.6, steps=30, seed=3)
    b = simulate("dropout", X, Z, y, lr=0.1, keep=0.6, steps=30, seed=3)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.risk, b.risk)


def test_records_and_snapshots():
    X, Z, y = problem(8, n=10)
    out = simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=10, record_every=4, snapshot_every=5,
                   test_inputs=Z[:3], test_targets=y[:3], probe_inputs=Z)
    assert out.steps.tolist() == [0, 4, 8, 10]
    torch.testing.assert_close(out.times, out.steps.double() * 0.1)
    assert out.risk.shape == (4,) and out.test_risk.shape == (4,) and out.outputs.shape == (4, 5)
    assert out.snapshot_steps.tolist() == [0, 5, 10] and out.snapshots.shape == (3, 10, 4)
    torch.testing.assert_close(out.snapshots[-1], out.particles)
    torch.testing.assert_close(out.outputs[-1], predict(out.particles, Z))
    r = predict(X, Z) - y
    torch.testing.assert_close(out.risk[0], 0.5 * (r * r).mean())
    assert out.diverged_at_step is None


def test_records_over_blocks_of_samples(monkeypatch):
    """A record's forward pass over ragged blocks of samples records what one pass does."""
    from dropdyn import engine

    X, Z, y = problem(8, n=10, R=3, bias=True)
    kw = dict(lr=0.1, keep=0.5, steps=6, record_every=3, test_inputs=Z[:3] + 1, test_targets=y[:3], probe_inputs=Z)
    whole = simulate("dropout", X, Z, y, **kw)
    monkeypatch.setitem(engine.RECORD_BLOCK_ENTRIES, "cpu", 1)
    monkeypatch.setattr(engine, "RECORD_MIN_BLOCK", 2)  # blocks of 2, 2 and 1 of the m = 5 samples
    blocks = simulate("dropout", X, Z, y, **kw)
    assert torch.equal(blocks.particles, whole.particles)
    for name in ("risk", "test_risk", "outputs"):
        torch.testing.assert_close(getattr(blocks, name), getattr(whole, name), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(whole.outputs[-1], predict(whole.particles, Z))


def test_a_probe_that_is_the_test_set_shares_its_forward_pass():
    X, Z, y = problem(9, n=10)
    kw = dict(lr=0.1, keep=0.5, steps=4, record_every=2, test_inputs=Z, test_targets=y)
    shared = simulate("ram", X, Z[:2], y[:2], probe_inputs=Z, **kw)
    apart = simulate("ram", X, Z[:2], y[:2], probe_inputs=Z.clone(), **kw)
    assert torch.equal(shared.test_risk, apart.test_risk) and torch.equal(shared.outputs, apart.outputs)
    r = predict(shared.particles, Z) - y
    torch.testing.assert_close(shared.test_risk[-1], 0.5 * (r * r).mean())


def test_gd_decreases_the_risk():
    X, Z, y = problem(9, n=100)
    out = simulate("gd", X, Z, y, lr=0.05, keep=1.0, steps=200, record_every=50)
    assert torch.all(out.risk[1:] < out.risk[:-1])


def test_divergence_stops_and_keeps_what_was_computed():
    X, Z, y = problem(10, n=20)
    out = simulate("gd", X, Z, 100 * y, lr=1e4, keep=1.0, steps=500, activation="identity")
    k = out.diverged_at_step
    assert k is not None and 1 <= k < 500
    assert torch.isfinite(out.particles).all()
    assert out.steps[-1] == k - 1
    assert torch.isfinite(out.risk).all()
    # the returned particles are the state after k − 1 steps
    again = simulate("gd", X, Z, 100 * y, lr=1e4, keep=1.0, steps=k - 1, activation="identity")
    assert torch.equal(again.particles, out.particles)


def test_float32_runs_and_stays_float32():
    X, Z, y = problem(11, n=30)
    out = simulate("dropout", X.float(), Z, y, lr=0.1, keep=0.5, steps=5)
    assert out.particles.dtype == torch.float32
    ref = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=5)
    torch.testing.assert_close(out.particles.double(), ref.particles, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_dropout_without_compaction_is_the_same_step(bias, activation):
    # what a GPU runs at small widths (no host read of the kept count): all neurons, dropped
    # ones with multiplier 0; per-replica masks, one replica with every neuron dropped
    from dropdyn.engine import rule_for, step
    from dropdyn.model import Design

    X, Z, y = problem(14, n=9, R=3, bias=bias)
    q, lr = 0.4, 0.3
    mask = draw_masks(q, 1, (3, 9), seed=2)[0]
    mask[2] = False
    design = Design.build(Z, y, activation, bias)
    a, W = design.pack(X)
    rule = rule_for("dropout", 9, q)
    compacted, full = (step(design, a, W, lr, rule, mask, q, compact=c) for c in (True, False))
    want = reference_step("dropout", X, Z, y, lr, q, mask, activation)
    for out in (compacted, full):
        torch.testing.assert_close(design.unpack(out[0], out[1]), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full[2][:2], compacted[2][:2], rtol=1e-12, atol=1e-12)
    assert torch.equal(design.unpack(full[0], full[1])[2], X[2])  # nothing kept, nothing moves


@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
def test_the_kept_rows_step_in_place_is_the_copied_step_and_undoes(loss):
    # in place, the kept rows of a and W change and nothing else does; the bits are those
    # of the out-of-place step (which leaves its inputs alone), and restore() gives back
    # the old state bit for bit
    from dropdyn.engine import kept_rows_step
    from dropdyn.losses import LOSSES, encode
    from dropdyn.model import Design

    K = 3 if loss == "cross-entropy" else 1
    g = torch.Generator().manual_seed(4)
    X = torch.randn(2, 9, 4 + K, generator=g, dtype=torch.float64)
    Z = torch.randn(14, 3, generator=g, dtype=torch.float64)
    y, K = encode(LOSSES[loss], "y", torch.randint(0, 3, (14,), generator=g) if K > 1 else Z[:, 0], K if K > 1
                  else None)
    design = Design.build(Z, y, "tanh", True, LOSSES[loss], outputs=K)
    mask = draw_masks(0.5, 1, (2, 9), seed=3)[0]
    a, W = design.pack(X)
    copied = kept_rows_step(design, a, W, 0.3, mask, 0.5)
    assert torch.equal(design.unpack(a, W), X)
    a2, W2 = a.clone(), W.clone()
    moved = kept_rows_step(design, a2, W2, 0.3, mask, 0.5, in_place=True)
    assert moved[0] is not None and moved[0].data_ptr() == a2.data_ptr() and moved[1].data_ptr() == W2.data_ptr()
    for x, z in zip(copied[:3], moved[:3], strict=True):
        assert torch.equal(x, z)
    changed = (design.unpack(a2, W2) != X).any(-1)
    assert changed.any() and not (changed & ~mask).any()
    moved[3]()
    assert torch.equal(design.unpack(a2, W2), X)


def test_all_neurons_dropped_moves_nothing(compaction):
    X, Z, y = problem(12, n=4)
    out = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=1, masks=torch.zeros(1, 4, dtype=torch.bool))
    assert torch.equal(out.particles, X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    X, Z, y = problem(13, n=64)
    masks = draw_masks(0.5, 10, (64,), seed=0)
    cpu = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=10, masks=masks)
    gpu = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=10, masks=masks, device="cuda")
    torch.testing.assert_close(gpu.particles, cpu.particles, rtol=1e-9, atol=1e-10)
    assert not gpu.info["compact"]  # a small GPU step skips compaction's host read


def test_seed_or_generator_give_the_same_masks():
    import pytest

    g = torch.Generator().manual_seed(0)
    X, Z, y = torch.randn(30, 3, generator=g), torch.randn(10, 2, generator=g), torch.randn(10, generator=g)
    by_seed = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=5, seed=7)
    by_gen = simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(by_seed.particles, by_gen.particles)
    with pytest.raises(ValueError, match="give a seed or a torch.Generator, not both"):
        simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=5, seed=1, generator=torch.Generator())


def test_grouped_options_are_the_flat_keywords():
    """records=Records(...) and execution=Execution(...) run the same as their flat keywords,
    bit for bit; a setting given both ways, or a group of the wrong type, is refused."""
    from dropdyn import InputError
    from dropdyn.engine import Execution, Records

    X, Z, y = problem(3, n=8, m=6)
    Zt, yt = Z[:4] + 1, y[:4]
    flat = simulate("dropout", X, Z, y, lr=0.3, keep=0.5, steps=7, seed=2, record_every=3, test_inputs=Zt,
                    test_targets=yt, snapshot_every=2, divergence_threshold=1e3, dtype=torch.float64)
    grouped = simulate("dropout", X, Z, y, lr=0.3, keep=0.5, steps=7, seed=2,
                       records=Records(every=3, test_inputs=Zt, test_targets=yt, snapshot_every=2),
                       execution=Execution(dtype=torch.float64, divergence_threshold=1e3))
    for name in ("particles", "steps", "risk", "test_risk", "snapshots", "snapshot_steps"):
        assert torch.equal(getattr(flat, name), getattr(grouped, name)), name
    assert flat.info == grouped.info
    with pytest.raises(InputError, match="give every in records= or as keywords, not both"):
        simulate("gd", X, Z, y, lr=0.3, keep=0.5, steps=1, records=Records(), record_every=2)
    with pytest.raises(InputError, match="give backend in execution="):
        simulate("gd", X, Z, y, lr=0.3, keep=0.5, steps=1, execution=Execution(), backend="fused")
    with pytest.raises(InputError, match="records must be a dropdyn.engine.Records, got dict"):
        simulate("gd", X, Z, y, lr=0.3, keep=0.5, steps=1, records={"every": 2})


def test_the_independent_variant_shares_dropout_s_backward_masks_and_its_mean_step_is_gd():
    """The independent variant ("PN + RaM"): its backward masks are dropout's (one seed, one
    stream), its forward masks a stream of their own; averaged over every pair of masks
    (n = 4: 2⁴ × 2⁴, weights q^k (1 − q)^(n−k)) its step is GD's — the forward and backward
    draws are independent, so no self term (dropout's penalty) appears."""
    import itertools

    X, Z, y = problem(7, n=4, m=5)
    q, lr = 0.6, 0.2
    ind = simulate("independent", X, Z, y, lr=lr, keep=q, steps=3, seed=5)
    ram_masks = draw_masks(q, 3, (4,), seed=5)
    fwd = MaskStream(q, (1, 4), seed=5 + FORWARD_SEED).take(3)[:, 0]
    Xr = X
    for k in range(3):
        Xr = reference_step("independent", Xr, Z, y, lr, q, ram_masks[k], forward_mask=fwd[k])
    torch.testing.assert_close(ind.particles, Xr, rtol=1e-12, atol=1e-12)
    mean = torch.zeros_like(X)
    for bwd in itertools.product([0, 1], repeat=4):
        for fw in itertools.product([0, 1], repeat=4):
            b, f = torch.tensor(bwd, dtype=torch.bool), torch.tensor(fw, dtype=torch.bool)
            kept = int(b.sum()) + int(f.sum())
            w = q**kept * (1 - q) ** (8 - kept)
            mean += w * reference_step("independent", X, Z, y, lr, q, b, forward_mask=f)
    gd = simulate("gd", X, Z, y, lr=lr, keep=q, steps=1).particles
    torch.testing.assert_close(mean, gd, rtol=1e-12, atol=1e-12)
