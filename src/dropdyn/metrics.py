"""Distances between coupled particle systems and between predictors (docs/theory.md §2)."""

from __future__ import annotations

import torch

from ._checks import InputError, check_choice, check_finite, check_int, check_memory, check_seed


def particle_distance(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Coupled particle-wise distance ``(1/n) Σ_i |X_i − Y_i|²`` over the last two axes
    (``particle_distance(torch.zeros(4, 2), torch.ones(4, 2))`` is ``tensor(2.)``):
    ``(…, n, p), (…, n, p) → (…)``. Neuron i of X is paired with neuron i of Y."""
    if X.shape != Y.shape:
        raise InputError(f"coupled particles must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    return ((X - Y) ** 2).sum(-1).mean(-1)


def output_gap(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖f − g‖ = ((1/m) Σ_j (f_j − g_j)²)^{1/2}`` over the last axis (``⟨·,·⟩`` of §1)."""
    if not (isinstance(f, torch.Tensor) and isinstance(g, torch.Tensor)):
        raise InputError(f"outputs must be torch tensors, got {type(f).__name__} and {type(g).__name__}")
    if f.shape != g.shape:
        raise InputError(f"outputs must have the same shape, got {tuple(f.shape)} and {tuple(g.shape)}")
    return ((f - g) ** 2).mean(-1).sqrt()


W2_METHODS = ("exact", "sliced")


def wasserstein2(X: torch.Tensor, Y: torch.Tensor, *, method: str = "exact", projections: int = 200,
                 seed: int = 0) -> float:
    """W2 between the empirical measures of ``X (n, p)`` and ``Y (n', p)`` (uniform weights).

    ``method="exact"`` (default): POT's network simplex (``ot.emd2``) on squared Euclidean
    costs. It holds the n × n' cost matrix and transport plan in float64, 16·n·n' bytes
    (5,000 points: 0.4 GiB; 50,000: 37 GiB), and is refused, before allocating, where that
    does not fit in memory. ``method="sliced"``: the sliced W2
    (``ot.sliced_wasserstein_distance``, ``projections`` random directions), a *different*
    quantity: ≤ W2, smaller by up to a factor √p — never a substitute for the exact value,
    so it is used only when asked for, and whoever reports it should name it. Note: two
    independent samples of one law in R^p are already far apart in W2 when p ≳ 5, so
    compare *coupled* systems where possible (docs/theory.md §2).

    >>> X = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> round(wasserstein2(X, X + torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)), 6)  # a shift by 5
    5.0
    """
    import numpy as np
    import ot

    check_choice("W2 method", method, W2_METHODS)
    if X.dim() != 2 or Y.dim() != 2 or X.shape[1] != Y.shape[1]:
        raise InputError(f"point clouds must be (n, p) and (n', p), got {tuple(X.shape)} and {tuple(Y.shape)}")
    if len(X) < 1 or len(Y) < 1:
        raise InputError(f"point clouds must be non-empty, got {len(X)} and {len(Y)} points")
    for name, cloud in (("X", X), ("Y", Y)):
        if cloud.is_floating_point():  # POT would read NaN costs as 0: "identical"
            check_finite(f"point cloud {name}", cloud)
    if method == "sliced":
        projections, seed = check_int("projections", projections, 1), check_seed(seed)
    if method == "exact":
        check_memory(f"exact W2 between {len(X):,} and {len(Y):,} points (method='sliced' is the cheap, "
                     "smaller proxy)", 16.0 * len(X) * len(Y))
    x, y = X.detach().cpu().double().numpy(), Y.detach().cpu().double().numpy()
    if method == "exact":
        M = ot.dist(x, y)  # squared Euclidean
        return float(np.sqrt(max(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), M, numItermax=10_000_000), 0.0)))
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=projections, seed=seed))
