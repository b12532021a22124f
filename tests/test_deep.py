"""Deep mean-field dropout (dropdyn.deep, docs/theory.md §6): L = 1 against the two-layer
engine (bit for bit, and the autograd step to rounding), the deep variants against
hand-written gradients, the expected step against enumeration, keep = 1 against GD,
coupling and max-norm."""

import itertools

import pytest
import torch

import dropdyn
from dropdyn import deep
from dropdyn.masks import draw_masks

f64 = torch.float64


def _data(m=12, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=f64), torch.randn(m, generator=g, dtype=f64)


@pytest.mark.parametrize("variant", ["dropout", "ram", "forward-only", "gd", "expected"])
def test_one_hidden_layer_is_the_two_layer_engine(variant):
    # L = 1 runs the two-layer engine on particles X_i = (a_i, W_1[i]) (the expected step: its
    # penalty GD), bit for bit; and the deep autograd step at L = 1 is the engine's step
    Z, y = _data()
    net = deep.init(1, 8, 3, replicas=2, generator=torch.Generator().manual_seed(1))  # 2^8 masks: enumerated
    masks = draw_masks(0.6, 15, (1, 2, 8), seed=4)
    res = deep.simulate(variant, net, Z, y, lr=0.3, keep=0.6, steps=15, masks=masks)
    X0 = torch.cat([net.readout[..., None], net.first], -1)
    name = "penalty" if variant == "expected" else variant
    want = dropdyn.simulate(name, X0, Z, y, lr=0.3, keep=0.6, steps=15, masks=masks[:, 0], record_every=15)
    assert torch.equal(torch.cat([res.net.readout[..., None], res.net.first], -1), want.particles)
    assert torch.equal(torch.as_tensor(res.risk), want.risk)
    one = dropdyn.simulate(name, X0, Z, y, lr=0.3, keep=0.6, steps=1, masks=masks[:1, 0], record_every=1).particles
    exp = deep.expected_masks(1, 8, 2, 0.6, 1, torch.Generator()) if variant == "expected" else None
    g = deep.direction(variant, net, Z, y, masks[0], 0.6, "tanh", "squared", exp)
    step = [t - 0.3 * sc * x for t, sc, x in zip(net.tensors, net.scales(), g, strict=True)]
    torch.testing.assert_close(torch.cat([step[-1][..., None], step[0]], -1), one, rtol=1e-12, atol=1e-13)


def _by_hand(net, Z, y, mult):
    """The two-hidden-layer network's loss, written out: ½ mean (f − y)²."""
    n = net.width
    z1 = torch.tanh(net.first[0] @ Z.T) * mult[0][0][:, None]
    z2 = torch.tanh(net.hidden[0][0] @ z1 / n) * mult[1][0][:, None]
    f = net.readout[0] @ z2 / n
    return 0.5 * ((f - y) ** 2).mean()


def test_the_deep_variants_against_their_definitions():
    Z, y = _data(seed=2)
    net = deep.init(2, 5, 3, generator=torch.Generator().manual_seed(3))
    mask = draw_masks(0.5, 1, (2, 1, 5), seed=5)[0]
    mask[0, 0, :2] = True  # some kept in each layer
    mult = [m.to(f64) / 0.5 for m in mask]
    ones = [torch.ones(1, 5, dtype=f64)] * 2
    ts = [t.clone().requires_grad_(True) for t in net.tensors]
    p = deep.DeepNet.from_tensors(ts)
    masked = torch.autograd.grad(_by_hand(p, Z, y, mult), ts)
    full = torch.autograd.grad(_by_hand(p, Z, y, ones), ts)
    got = {v: deep.direction(v, net, Z, y, mask, 0.5, "tanh", "squared") for v in ("dropout", "ram", "gd")}
    for want, have in ((masked, got["dropout"]), (full, got["gd"])):
        for w, h in zip(want, have, strict=True):
            torch.testing.assert_close(h, w, rtol=1e-12, atol=1e-14)
    thin = [mult[0][0][:, None], mult[1][0][:, None] * mult[0][0][None, :], mult[1][0]]
    for w, h, t in zip(full, got["ram"], thin, strict=True):
        torch.testing.assert_close(h[0], w[0] * t, rtol=1e-12, atol=1e-14)
    # forward-only: the full network's Jacobian times the masked output's residual
    fo = deep.direction("forward-only", net, Z, y, mask, 0.5, "tanh", "squared")
    with torch.no_grad():
        r = (deep.forward(net, Z, "tanh", mult) - y)[0] / len(y)
    J = torch.autograd.functional.jacobian(lambda *t: deep.forward(deep.DeepNet.from_tensors(list(t)), Z, "tanh")[0],
                                           tuple(net.tensors))
    for j, h in zip(J, fo, strict=True):
        torch.testing.assert_close(h, torch.tensordot(r, j, dims=1), rtol=1e-12, atol=1e-14)


def test_the_expected_step_enumerates_every_mask():
    # 2 layers × 3 units: 64 masks, each with its probability (at L = 1 with the squared loss
    # it is the two-layer engine's penalty GD: test_one_hidden_layer_is_the_two_layer_engine)
    Z, y = _data(m=6, seed=6)
    net = deep.init(2, 3, 3, generator=torch.Generator().manual_seed(7))
    exp = deep.expected_masks(2, 3, 1, 0.4, 8, torch.Generator())
    assert exp[0].shape == (64, 2, 1, 3) and abs(float(exp[1].sum()) - 1) < 1e-15
    got = deep.direction("expected", net, Z, y, None, 0.4, "tanh", "squared", exp)
    want = None
    for bits in itertools.product([False, True], repeat=6):
        M = torch.tensor(bits).view(2, 1, 3)
        w = 0.4 ** sum(bits) * 0.6 ** (6 - sum(bits))
        g = deep.direction("dropout", net, Z, y, M, 0.4, "tanh", "squared")
        want = [w * x for x in g] if want is None else [a + w * x for a, x in zip(want, g, strict=True)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("variant", ["dropout", "ram", "forward-only", "expected"])
def test_keep_one_is_gd(variant):
    Z, y = _data(seed=9)
    net = deep.init(3, 6, 3, replicas=2, generator=torch.Generator().manual_seed(10))
    gd = deep.simulate("gd", net, Z, y, lr=0.1, keep=1.0, steps=6)
    other = deep.simulate(variant, net, Z, y, lr=0.1, keep=1.0, steps=6, expected_samples=2)
    for a, b in zip(other.net.tensors, gd.net.tensors, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_coupling_same_seed_same_masks_and_replicas_independent():
    Z, y = _data(seed=11)
    net = deep.init(2, 7, 3, replicas=3, generator=torch.Generator().manual_seed(12))
    a = deep.simulate("dropout", net, Z, y, lr=0.2, keep=0.5, steps=8, seed=3)
    b = deep.simulate("dropout", net, Z, y, lr=0.2, keep=0.5, steps=8, seed=3)
    c = deep.simulate("dropout", net, Z, y, lr=0.2, keep=0.5, steps=8, seed=4)
    masks = draw_masks(0.5, 8, (2, 3, 7), seed=3)
    d = deep.simulate("dropout", net, Z, y, lr=0.2, keep=0.5, steps=8, masks=masks)
    for x, z, w in zip(a.net.tensors, b.net.tensors, d.net.tensors, strict=True):
        assert torch.equal(x, z) and torch.equal(x, w)
    assert not torch.equal(a.net.readout, c.net.readout)
    # a replica's run is the run of that replica alone, on its own masks
    solo = deep.DeepNet.from_tensors([t[1:2] for t in net.tensors])
    e = deep.simulate("dropout", solo, Z, y, lr=0.2, keep=0.5, steps=8, masks=masks[:, :, 1:2])
    for x, z in zip(a.net.tensors, e.net.tensors, strict=True):
        torch.testing.assert_close(x[1:2], z, rtol=1e-12, atol=1e-14)


def test_bad_input_and_divergence():
    Z, y = _data()
    net = deep.init(2, 4, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(dropdyn.InputError, match="variant"):
        deep.simulate("nope", net, Z, y, lr=0.1, keep=0.5, steps=2)
    with pytest.raises(dropdyn.InputError, match="masks must have shape"):
        deep.simulate("dropout", net, Z, y, lr=0.1, keep=0.5, steps=2, masks=torch.ones(2, 1, 1, 4, dtype=torch.bool))
    res = deep.simulate("gd", net, Z, y * 1e3, lr=1e6, keep=1.0, steps=50)
    assert isinstance(res.diverged_at_step, int) and all(bool(torch.isfinite(t).all()) for t in res.net.tensors)


def test_max_norm_projects_each_unit_and_leaves_the_inside_alone():
    net = deep.init(3, 6, 4, replicas=2, generator=torch.Generator().manual_seed(13))
    scales = [1.0, 6**0.5, 6**0.5]
    radii = deep.max_norm_radii(net, 1.5)
    for r, W, scale in zip(radii, [net.first, *net.hidden], scales, strict=True):  # c × the layer's row RMS
        assert r == pytest.approx(1.5 * float((W.norm(dim=-1) ** 2).mean().sqrt()) / scale, rel=1e-12)
    net.first[0, 0] *= 10  # one row far outside
    before = net.clone()
    deep.project_max_norm(net, radii)
    for new, old, scale, r in zip([net.first, *net.hidden], [before.first, *before.hidden], scales, radii,
                                  strict=True):
        assert bool((new.norm(dim=-1) / scale <= r * (1 + 1e-12)).all())
        inside = old.norm(dim=-1) / scale <= r
        assert torch.equal(new[inside], old[inside]) and bool((~inside).any())
        outside = ~inside
        torch.testing.assert_close(new[outside], old[outside] * (r / (old[outside].norm(dim=-1, keepdim=True)
                                                                      / scale)))
    assert torch.equal(net.readout, before.readout)
    Z, y = _data(d=4)
    res = deep.simulate("dropout", before, Z, y, lr=0.5, keep=0.5, steps=5, max_norm=1.5)
    first = deep.max_norm_radii(before, 1.5)[0]
    assert float(res.net.first.norm(dim=-1).max()) <= first * (1 + 1e-12)


def test_correlated_init_keeps_every_layer_alive_where_iid_degenerates():
    # the iid limit's pre-activations beyond layer 1 vanish as n^−½ (Nguyen & Pham's degeneracy
    # from L = 3 on); the correlated initialisation's stay O(1) at every width
    Z = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=f64)

    def last_rms(kind, n):
        net = deep.init(3, n, 5, generator=torch.Generator().manual_seed(n), kind=kind)
        h = net.first[0] @ Z.T
        for W in net.hidden:
            h = W[0] @ torch.tanh(h) / n
        return float(h.square().mean().sqrt())

    small, large = 50, 3200  # 64 times the width: iid's RMS falls 8-fold (n^−½), to ~0.003
    assert last_rms("iid", small) / last_rms("iid", large) > 4
    assert 0.5 < last_rms("correlated", large) < 2 and 0.5 < last_rms("correlated", small) / last_rms(
        "correlated", large) < 2


def test_correlated_init_adds_the_types_rank_d_term():
    # with one generator state, correlated − iid is (g/√d) U_{l+1} U_lᵀ: rank d, U_1 = √d W_1
    g = lambda: torch.Generator().manual_seed(21)  # noqa: E731
    iid = deep.init(3, 12, 3, replicas=2, generator=g(), kind="iid")
    cor = deep.init(3, 12, 3, replicas=2, generator=g())
    assert torch.equal(iid.first, cor.first) and torch.equal(iid.readout, cor.readout)
    diffs = [c - i for c, i in zip(cor.hidden, iid.hidden, strict=True)]
    assert all(int(r) == 3 for d in diffs for r in torch.linalg.matrix_rank(d))
    # the first one is B W_1ᵀ for some B (n, d): its rows lie in the span of W_1's columns
    B = diffs[0][0] @ torch.linalg.pinv(iid.first[0].T)
    torch.testing.assert_close(B @ iid.first[0].T, diffs[0][0], rtol=1e-10, atol=1e-10)
    other = diffs[1][0] @ torch.linalg.pinv(iid.first[0].T) @ iid.first[0].T
    assert float((other - diffs[1][0]).abs().max()) > 1.0  # the second (U_3 U_2ᵀ) is not
    with pytest.raises(dropdyn.InputError, match="kind"):
        deep.init(2, 4, 3, generator=g(), kind="orthogonal")
