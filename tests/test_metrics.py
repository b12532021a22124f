"""Distances between coupled particle systems and predictors, against their formulas."""

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from dropdyn import InputError
from dropdyn.metrics import output_gap, particle_distance, wasserstein2


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_particle_distance_is_the_mean_squared_neuron_gap_over_the_last_two_axes():
    """(1/n) Σ_i |X_i − Y_i|², for each leading (replica) index."""
    X, Y = randn(3, 7, 4), randn(3, 7, 4, seed=1)
    ref = torch.tensor([sum(float(((X[r, i] - Y[r, i]) ** 2).sum()) for i in range(7)) / 7 for r in range(3)],
                       dtype=torch.float64)
    torch.testing.assert_close(particle_distance(X, Y), ref, rtol=1e-13, atol=0)
    assert float(particle_distance(torch.zeros(4, 2), 2 * torch.ones(4, 2))) == 8.0
    with pytest.raises(ValueError, match=r"same shape, got \(7, 4\) and \(6, 4\)"):
        particle_distance(X[0], Y[0, :6])


def test_output_gap_is_the_empirical_l2_norm_over_samples():
    """‖f − g‖ = ((1/m) Σ_j (f_j − g_j)²)^{1/2}."""
    f, g = randn(2, 9), randn(2, 9, seed=1)
    ref = torch.tensor([math.sqrt(sum((float(f[r, j]) - float(g[r, j])) ** 2 for j in range(9)) / 9)
                        for r in range(2)], dtype=torch.float64)
    torch.testing.assert_close(output_gap(f, g), ref, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match=r"same shape, got \(9,\) and \(8,\)"):
        output_gap(f[0], g[0, :8])


def test_exact_w2_is_the_optimal_matching_cost_and_bounds_the_sliced_one():
    """For two clouds of n points each, the exact W2² is the cheapest perfect matching's
    mean squared distance (Birkhoff: an optimal plan is a permutation); the sliced W2 is
    never larger than the exact one."""
    X, Y = randn(40, 3), 0.5 * randn(40, 3, seed=1) + 1.0
    cost = torch.cdist(X, Y).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    ref = math.sqrt(cost[rows, cols].mean())
    assert wasserstein2(X, Y) == pytest.approx(ref, rel=1e-10)
    assert wasserstein2(X, Y, method="sliced", projections=500) <= ref
    # unequal sizes: one point against two moves half its mass each way
    one, two = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    assert wasserstein2(one, two) == wasserstein2(two, one) == pytest.approx(math.sqrt((1 + 9) / 2), rel=1e-12)
    assert wasserstein2(X, X + 0.3 / math.sqrt(3)) == pytest.approx(0.3, rel=1e-12)  # below 1 too: a shift
    with pytest.raises(ValueError, match=r"\(n, p\) and \(n', p\), got \(40, 3\) and \(40, 2\)"):
        wasserstein2(X, Y[:, :2])
    with pytest.raises(ValueError, match="non-empty, got 0 and 40"):
        wasserstein2(X[:0], Y)


def test_only_the_exact_w2_is_sized_against_memory(monkeypatch):
    """The exact W2 asks for its 16·n·n' bytes (cost matrix and plan, float64) before
    allocating; the sliced one holds no n × n' matrix and is never refused for size."""
    import dropdyn.metrics

    asked = []
    monkeypatch.setattr(dropdyn.metrics, "check_memory", lambda what, nbytes: asked.append(nbytes))
    wasserstein2(randn(30, 2), randn(70, 2))
    assert asked == [16.0 * 30 * 70]
    monkeypatch.undo()
    big = torch.zeros(10**5, 2, dtype=torch.float64)  # its exact W2 would need 149 GiB
    assert wasserstein2(big, big, method="sliced", projections=10) == 0.0


@pytest.mark.parametrize("kw, match", [
    (dict(X=float("nan")), "point cloud X contains 1 non-finite"),
    (dict(Y=float("inf")), "point cloud Y contains 1 non-finite"),
    (dict(method="sliced", projections=0), "projections must be an integer >= 1"),
    (dict(method="sliced", seed=-1), "seed"),
])
def test_w2_refuses_non_finite_clouds_and_bad_sliced_settings(kw, match):
    """NaN or inf in a cloud is not 'identical' (POT reads a NaN cost as 0); no projections
    and a negative seed are refused in one line, not a NaN or POT's own error."""
    X = torch.zeros(4, 2, dtype=torch.float64)
    Y = torch.ones(4, 2, dtype=torch.float64)
    if "X" in kw:
        X[1, 0] = kw.pop("X")
    if "Y" in kw:
        Y[2, 1] = kw.pop("Y")
    with pytest.raises(InputError, match=match):
        wasserstein2(X, Y, **kw)
