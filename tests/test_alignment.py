"""Hessian–variance alignment: the matrix-free estimator against exact enumeration."""

import pytest
import torch
from torch import nn

from dropdyn.nets import DropoutMLP
from dropdyn.noise_geometry import alignment, matrix_alignment, random_baseline


def tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1])
    return model, x, y


def test_estimate_agrees_with_exact_enumeration():
    """2 examples × 4 units: all 2^8 masks enumerated; the 99% interval of the estimate
    (400 samples) must contain the exact α, and each estimated quantity be near its own."""
    model, x, y = tiny()
    ex = alignment(model, nn.functional.cross_entropy, x, y, exact=True)
    est = alignment(model, nn.functional.cross_entropy, x, y, samples=400, seed=1, confidence=0.99)
    assert ex.exact and ex.samples == 2**8 and ex.parameters == 26
    assert (ex.gradients, est.gradients, est.exact) == (0, 4, False)  # the exact α samples no gradient
    assert ex.ci == (ex.alpha, ex.alpha) and ex.trace_HS[1] == ex.fro_H_sq[1] == ex.fro_S_sq[1] == 0.0
    assert est.ci[0] <= ex.alpha <= est.ci[1], (est, ex.alpha)
    for got, want in ((est.trace_HS, ex.trace_HS), (est.fro_H_sq, ex.fro_H_sq), (est.fro_S_sq, ex.fro_S_sq)):
        assert abs(got[0] - want[0]) <= 4 * got[1] + 1e-12
    assert abs(est.baseline - ex.baseline) < 0.25 * ex.baseline


def test_interval_coverage_and_component_errors():
    """Over 40 independent estimates (40 samples each), the 95% interval covers the exact α
    about 95% of the time (≥ 34 of 40), and the estimated means of Tr(HΣ), ‖H‖², ‖Σ‖² are
    unbiased: their z-scores against the exact values average near 0 with spread near 1.
    (A 200-repeat run gave coverage 0.945 and z spreads 1.02–1.11.) The interval is not too
    wide either: its half-width / 1.96 is the spread of the 40 estimates of α (measured 0.91 of
    it; the standard error of a 40-sample spread is 11%)."""
    model, x, y = tiny()
    ex = alignment(model, nn.functional.cross_entropy, x, y, exact=True)
    hits, zs, alphas, halves = 0, [], [], []
    for r in range(40):
        est = alignment(model, nn.functional.cross_entropy, x, y, samples=40, seed=100 + r)
        hits += est.ci[0] <= ex.alpha <= est.ci[1]
        alphas.append(est.alpha)
        halves.append((est.ci[1] - est.ci[0]) / 2)
        zs.append([(got[0] - want[0]) / got[1] for got, want in
                   ((est.trace_HS, ex.trace_HS), (est.fro_H_sq, ex.fro_H_sq), (est.fro_S_sq, ex.fro_S_sq))])
    z = torch.tensor(zs)
    assert hits >= 34, hits
    ratio = float(torch.tensor(halves).mean() / 1.959964 / torch.tensor(alphas).std())
    assert 0.6 < ratio < 1.5, ratio
    assert (z.mean(0).abs() < 0.5).all() and ((z.std(0) > 0.7) & (z.std(0) < 1.4)).all(), (z.mean(0), z.std(0))


def test_progress_is_called_once_per_sample_and_changes_nothing():
    torch.manual_seed(2)
    model = DropoutMLP([3, 4, 2], keep_hidden=0.5).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    seen = []
    with_progress = alignment(model, nn.functional.cross_entropy, x, y, samples=6, seed=3, on_sample=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert with_progress == alignment(model, nn.functional.cross_entropy, x, y, samples=6, seed=3)


def test_dropdyn_dropout_layers_work_too():
    torch.manual_seed(2)
    model = DropoutMLP([3, 4, 2], keep_hidden=0.5).double()
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    ex = alignment(model, nn.functional.cross_entropy, x, y, exact=True)
    est = alignment(model, nn.functional.cross_entropy, x, y, samples=400, seed=3, confidence=0.99)
    assert est.ci[0] <= ex.alpha <= est.ci[1]


@pytest.mark.parametrize("layer, inverted", [("torch", True), ("dropdyn", True), ("dropdyn", False)])
def test_the_estimator_applies_a_mask_as_the_model_s_own_dropout_does(layer, inverted):
    """α's masks replace the model's dropout draws, in its convention: with the draw the layer
    itself makes, the output is the model's own training-mode output (x·mask/keep inverted,
    x·mask not). The estimator and the exact enumeration share this hook, so comparing them
    cannot see a wrong scaling (found by mutation)."""
    from dropdyn.nets import Dropout
    from dropdyn.noise_geometry import _masks

    keep = 0.3
    drop = nn.Dropout(1 - keep) if layer == "torch" else Dropout(keep, inverted=inverted)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), drop, nn.Linear(6, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    h = torch.tanh(model[0](x))
    mask = (torch.rand(h.shape, generator=torch.Generator().manual_seed(5), dtype=h.dtype) < keep).double()
    assert 0 < mask.sum() < mask.numel()
    with _masks(model, lambda i, shape: mask) as layers:
        replayed = model(x)
    assert [(m, k) for m, k, _ in layers] == [(drop, pytest.approx(keep))]
    scale = 1 / keep if inverted else 1.0
    assert torch.allclose(replayed, model[3](h * mask * scale), rtol=1e-13, atol=1e-13)
    if layer == "dropdyn":  # the layer's own draw, replayed through its generator
        drop.generator = torch.Generator().manual_seed(5)
        model.train()
        assert torch.allclose(model(x), replayed, rtol=1e-13, atol=1e-13)


def test_layers_that_drop_nothing_are_not_dropout_noise():
    """``nn.Dropout(0)`` and a keep of 1 add no noise: a model with only such layers is refused,
    and beside a real dropout layer they add no units to the exact enumeration."""
    from dropdyn.nets import Dropout

    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    for quiet in (nn.Dropout(0.0), Dropout(1.0)):
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), quiet, nn.Linear(4, 2)).double()
        with pytest.raises(ValueError, match="no dropout layer \\(or only keep = 1\\)"):
            alignment(model, nn.functional.cross_entropy, x, y)
    torch.manual_seed(1)
    model = DropoutMLP([3, 4, 4, 2], keep_hidden=[0.5, 1.0]).double()
    assert alignment(model, nn.functional.cross_entropy, x, y, exact=True).samples == 2 ** (4 * 2)


def test_alpha_is_one_when_sigma_is_proportional_to_H_and_random_baseline_is_near_zero():
    """With spectra dominated by a few eigenvalues (λ_k ∝ k^−2, as for Hessians), random
    eigenvectors give α ≈ Tr H Tr Σ/(D‖H‖‖Σ‖) ≈ 2.5/D: near zero (the paper: 7.8e-4)."""
    g = torch.Generator().manual_seed(0)
    D = 200
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.arange(1, D + 1, dtype=torch.float64) ** -2.0
    H = Q @ torch.diag(lam) @ Q.T
    assert abs(matrix_alignment(H, 3.0 * H) - 1) < 1e-12
    base = random_baseline(H, H, samples=10)
    assert 0 < base < 0.05
    # the closed-form mean that alignment() reports: Tr H Tr Σ / (D ‖H‖ ‖Σ‖)
    assert abs(base - float(H.trace() ** 2 / (D * H.norm() ** 2))) < 0.2 * base


def test_bad_input():
    model, x, y = tiny()
    with pytest.raises(ValueError, match="no dropout layer"):
        alignment(nn.Linear(3, 2).double(), nn.functional.cross_entropy, x, y)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        alignment(model, nn.functional.cross_entropy, x * float("nan"), y)
    with pytest.raises(ValueError, match="samples must be an integer >= 2"):
        alignment(model, nn.functional.cross_entropy, x, y, samples=1)
    with pytest.raises(ValueError, match="gradients must be an integer >= 2"):
        alignment(model, nn.functional.cross_entropy, x, y, gradients=1)
    with pytest.raises(ValueError, match="2\\^20 masks"):
        alignment(model, nn.functional.cross_entropy, torch.randn(5, 3, dtype=torch.float64),
                  torch.zeros(5, dtype=torch.long), exact=True)
    wide = nn.Sequential(nn.Linear(3, 17), nn.Tanh(), nn.Dropout(0.5), nn.Linear(17, 2)).double()
    with pytest.raises(ValueError, match="2\\^17 masks \\(dropout units × batch\\), more than 65536"):
        alignment(wide, nn.functional.cross_entropy, x[:1], y[:1], exact=True)  # one unit past the limit


def test_the_exact_limit_admits_exactly_its_unit_count(monkeypatch):
    """``MAX_EXACT_UNITS`` units are enumerated and one more is refused. The limit is
    lowered to 3 so that the edge costs 8 masks instead of 65536."""
    from dropdyn import noise_geometry

    monkeypatch.setattr(noise_geometry, "MAX_EXACT_UNITS", 3)
    torch.manual_seed(0)
    x, y = torch.randn(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    for units in (3, 4):
        net = nn.Sequential(nn.Linear(2, units), nn.Tanh(), nn.Dropout(0.5), nn.Linear(units, 2)).double()
        if units == 3:
            assert noise_geometry.exact_matrices(net, nn.functional.cross_entropy, x, y)[2] == 8
        else:
            with pytest.raises(ValueError, match="2\\^4 masks"):
                noise_geometry.exact_matrices(net, nn.functional.cross_entropy, x, y)


def test_noise_along_curvature_matches_dense():
    """The variance along each returned direction equals vᵀΣv for the exact Σ (within
    5 s.e.), and the top curvature approaches the exact H's (64 mask draws average the
    Hessian, so within 25%)."""
    from dropdyn.noise_geometry import exact_matrices, noise_along_curvature

    model, x, y = tiny()
    out = noise_along_curvature(model, nn.functional.cross_entropy, x, y, k=3, hessian_masks=64, samples=4000)
    H, S, _ = exact_matrices(model, nn.functional.cross_entropy, x, y)
    assert out["curvature"][0] >= out["curvature"][1] >= out["curvature"][2]
    top = torch.linalg.eigvalsh(H).flip(0)[:3].numpy()
    assert abs(out["curvature"][0] - top[0]) < 0.25 * top[0]
    V = torch.as_tensor(out["directions"])
    exact_var = torch.einsum("dk,de,ek->k", V, S, V).numpy()
    assert (abs(out["variance"] - exact_var) <= 5 * out["variance_se"]).all(), (out["variance"], exact_var)


def test_noise_along_curvature_standard_errors_match_the_errors():
    """``variance_se`` is the size of the error it reports: over 20 seeds × 2 directions,
    z = (variance − vᵀΣv)/se against the exact Σ has a robust spread (median |z|/0.674)
    near 1 (measured 0.96), where an se off by a factor 2 or more gives 0.5 or 2."""
    import numpy as np

    from dropdyn.noise_geometry import exact_matrices, noise_along_curvature

    model, x, y = tiny()
    _, S, _ = exact_matrices(model, nn.functional.cross_entropy, x, y)
    z = []
    for seed in range(20):
        out = noise_along_curvature(model, nn.functional.cross_entropy, x, y, k=2, hessian_masks=1, samples=100,
                                    seed=seed)
        V = torch.as_tensor(out["directions"])
        z.append((out["variance"] - torch.einsum("dk,de,ek->k", V, S, V).numpy()) / out["variance_se"])
    spread = float(np.median(np.abs(np.concatenate(z)))) / 0.6745
    assert 0.6 < spread < 1.6, spread


def test_the_noise_measurements_refuse_bad_input_by_name():
    """Each bound of ``noise_along_curvature`` (k < D, hessian_masks >= 1, samples >= 2, a
    valid seed, a batch the model takes) and of the dense helpers (square matrices of one
    size, finite, samples >= 1) refuses the value past it and admits the value on it."""
    from dropdyn.noise_geometry import noise_along_curvature

    model, x, y = tiny()  # D = 26 parameters
    ce = nn.functional.cross_entropy

    def nac(**kw):
        return noise_along_curvature(model, ce, kw.pop("x", x), kw.pop("y", y),
                                     **{"k": 1, "hessian_masks": 1, "samples": 2, **kw})

    for kw, message in (({"k": 0}, "k must be an integer >= 1, got 0"),
                        ({"k": 26}, "k must be less than the number of parameters \\(26\\) for Lanczos, got 26"),
                        ({"hessian_masks": 0}, "hessian_masks must be an integer >= 1, got 0"),
                        ({"samples": 1}, "samples must be an integer >= 2, got 1"),
                        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
                        ({"x": x * float("inf")}, "inputs must be finite"),
                        ({"y": y[:1]}, "inputs and targets must hold the same number")):
        with pytest.raises(ValueError, match=message):
            nac(**kw)
    assert nac(k=25)["directions"].shape == (26, 25)
    assert nac()["variance"].shape == (1,)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        alignment(model, ce, x, y, samples=2, seed=-1)

    eye = torch.eye(3, dtype=torch.float64)
    for H, S, message in ((eye, torch.eye(4), "H and S must have the same size, got \\(3, 3\\) and \\(4, 4\\)"),
                          (torch.ones(3), eye, "H must be a non-empty square matrix, got \\(3,\\)"),
                          (eye, torch.ones(3, 4), "S must be a non-empty square matrix, got \\(3, 4\\)"),
                          (eye * float("nan"), eye, "H contains 9 non-finite"),
                          (torch.zeros(0, 0), eye[:0, :0], "H must be a non-empty square matrix, got \\(0, 0\\)")):
        for f in (matrix_alignment, random_baseline):
            with pytest.raises(ValueError, match=message):
                f(H, S)
    with pytest.raises(ValueError, match="samples must be an integer >= 1, got 0"):
        random_baseline(eye, eye, samples=0)
    assert matrix_alignment(2 * eye[:1, :1], eye[:1, :1]) == 1.0  # the smallest problem: D = 1
    assert random_baseline(eye, eye, samples=1) == pytest.approx(1.0, abs=1e-12)  # Q I Qᵀ = I: any eigenvectors


def test_the_noise_measurements_defaults_are_their_documented_values():
    """The defaults (random_baseline: 100 samples, seed 0; noise_along_curvature: k = 10,
    8 Hessian masks, 100 samples, seed 0) are pinned: a changed default changes the
    numbers a default call reproduces."""
    from dropdyn.noise_geometry import noise_along_curvature

    model, x, y = tiny()
    ce = nn.functional.cross_entropy
    H = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    S = torch.diag(torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64))
    assert random_baseline(H, S) == random_baseline(H, S, samples=100, seed=0)
    assert random_baseline(H, S) != random_baseline(H, S, samples=101, seed=0) != random_baseline(H, S, seed=1)
    default = noise_along_curvature(model, ce, x, y)
    explicit = noise_along_curvature(model, ce, x, y, k=10, hessian_masks=8, samples=100, seed=0)
    for key in default:
        assert (default[key] == explicit[key]).all(), key
    assert default["curvature"].shape == (10,)
    for change in ({"hessian_masks": 9}, {"samples": 101}, {"seed": 1}):
        other = noise_along_curvature(model, ce, x, y, **{"k": 10, "hessian_masks": 8, "samples": 100, **change})
        assert not (other["variance"] == default["variance"]).all(), change


def test_flatness_matches_dense_hessian():
    from dropdyn.curvature import flatness

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    model.eval()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    # dense Hessian over the flat parameters (offsets of weight 4×3, bias 4, weight 2×4, bias 2)
    offsets = [0, 12, 16, 24]

    def loss(t):
        params = {n: t[o:o + p.numel()].reshape(p.shape)
                  for (n, p), o in zip(model.named_parameters(), offsets, strict=True)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    H = torch.autograd.functional.hessian(loss, flat)
    model.train()
    out = flatness(model, nn.functional.cross_entropy, x, y, probes=400)
    ev = torch.linalg.eigvalsh(H)
    assert abs(out["top_eigenvalue"] - float(ev.max())) < 1e-6 * float(ev.abs().max())
    assert abs(out["trace"] - float(H.trace())) < 5 * out["trace_se"]
    assert model.training  # mode restored


def test_batch_norm_running_statistics_are_left_alone():
    """The estimator's forward passes run in training mode; a batch-norm layer's running
    statistics must be as they were afterwards, and the estimate still match the exact α."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Dropout(0.5), nn.Linear(3, 2)).double()
    model.eval()
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex = alignment(model, nn.functional.cross_entropy, x, y, exact=True)
    est = alignment(model, nn.functional.cross_entropy, x, y, samples=300, seed=5, confidence=0.99)
    assert est.ci[0] <= ex.alpha <= est.ci[1], (est, ex.alpha)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_alignment_on_parameter_subsets_against_enumeration():
    """α of each layer's block: the exact path equals the dense block computed here from the
    enumerated H and Σ, and the estimate's 99% interval covers it; names and tensors select alike."""
    from dropdyn.noise_geometry import exact_matrices

    model, x, y = tiny()
    ce = nn.functional.cross_entropy
    H, S, _ = exact_matrices(model, ce, x, y)
    first = torch.arange(0, 16)  # 0.weight (4×3) and 0.bias (4), flat indices 0..15
    ex = alignment(model, ce, x, y, exact=True, parameters=["0.weight", "0.bias"])
    assert ex.parameters == 16 and abs(ex.alpha - matrix_alignment(H[first][:, first], S[first][:, first])) < 1e-12
    est = alignment(model, ce, x, y, samples=400, seed=4, confidence=0.99, parameters=["0.weight", "0.bias"])
    assert est.parameters == 16 and est.ci[0] <= ex.alpha <= est.ci[1], (est, ex.alpha)
    by_tensor = alignment(model, ce, x, y, exact=True, parameters=[model[0].weight, model[0].bias])
    assert by_tensor.alpha == ex.alpha
    last = alignment(model, ce, x, y, exact=True, parameters="3.weight")
    assert last.parameters == 8 and abs(last.alpha - matrix_alignment(H[16:24][:, 16:24], S[16:24][:, 16:24])) < 1e-12
    with pytest.raises(ValueError, match="'9.weight' is not a trainable parameter of the model; its names are 0.wei"):
        alignment(model, ce, x, y, parameters=["9.weight"])


CHANNEL_LAYERS = {"Dropout1d": (nn.Dropout1d, (3, 4, 5)), "Dropout2d": (nn.Dropout2d, (3, 4, 2, 5)),
                  "Dropout3d": (nn.Dropout3d, (3, 4, 2, 2, 3)), "AlphaDropout": (nn.AlphaDropout, (3, 4, 5)),
                  "FeatureAlphaDropout": (nn.FeatureAlphaDropout, (3, 4, 2, 5))}


@pytest.mark.parametrize("name", CHANNEL_LAYERS)
def test_channel_and_alpha_dropout_masks_are_applied_as_the_layer_applies_them(name):
    """With the mask the layer itself draws (torch's generator replayed), the hook's output is
    the layer's own training-mode output: channel masks for Dropout1d/2d/3d and
    FeatureAlphaDropout, AlphaDropout's affine rescaling of a unit set to −λα."""
    from dropdyn.noise_geometry import LAYERS

    cls, shape = CHANNEL_LAYERS[name]
    layer, keep = cls(0.4).train(), 0.6
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        own = layer(x)
        torch.manual_seed(7)
        noise = LAYERS[cls]
        mask = torch.empty(noise.mask_shape(tuple(x.shape)), dtype=x.dtype).bernoulli_(keep)
    assert 0 < mask.sum() < mask.numel()
    assert (mask.numel() < x.numel()) == (name != "AlphaDropout")  # a channel's unit is more than an element
    assert torch.allclose(noise.apply(x, mask, keep), own, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.Dropout2d(0.5), nn.FeatureAlphaDropout(0.4), nn.AlphaDropout(0.5)])
def test_channel_and_alpha_dropout_against_exact_enumeration(layer):
    """A small convolutional model: every mask of its channel (or element) units enumerated;
    the estimator's 99% interval covers the exact α."""
    torch.manual_seed(3)
    if isinstance(layer, nn.AlphaDropout):
        model = nn.Sequential(nn.Linear(3, 3), nn.SELU(), layer, nn.Linear(3, 2)).double()
        x = torch.randn(2, 3, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Conv2d(1, 3, 2), nn.Tanh(), layer, nn.Flatten(), nn.Linear(12, 2)).double()
        x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1])
    ex = alignment(model, nn.functional.cross_entropy, x, y, exact=True)
    assert ex.samples == 2**6  # 2 examples × 3 channels (or units)
    est = alignment(model, nn.functional.cross_entropy, x, y, samples=300, seed=2, confidence=0.99)
    assert est.ci[0] <= ex.alpha <= est.ci[1], (est, ex.alpha)


def test_randomness_outside_the_dropout_layers_is_refused_and_the_global_generator_is_left_alone():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.drop, self.b = nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(nn.functional.dropout(self.drop(torch.tanh(self.a(x))), 0.3, self.training))

    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="draws randomness of its own outside its dropout layers"):
        alignment(Functional(), nn.functional.cross_entropy, x, y, samples=4)
    model, x, y = tiny()
    before = torch.get_rng_state()
    alignment(model, nn.functional.cross_entropy, x, y, samples=4, seed=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_batch_norm_in_training_mode_takes_the_whole_batch():
    """A model with batch norm in training mode is checked on the real batch (a batch of one
    has no variance), and its α is estimated; the running statistics are left alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x, y = torch.randn(128, 20), torch.randint(0, 3, (128,))
    mean = model[1].running_mean.clone()
    res = alignment(model, nn.functional.cross_entropy, x, y, samples=6, seed=0)
    assert res.parameters == sum(p.numel() for p in model.parameters()) and res.alpha == res.alpha
    assert torch.equal(model[1].running_mean, mean) and model.training
