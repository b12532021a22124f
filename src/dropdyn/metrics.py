"""Distances between coupled particle systems and between predictors (THEORY.md §2)."""

from __future__ import annotations

import torch

from ._checks import InputError


def particle_distance(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Coupled particle-wise distance ``(1/n) Σ_i |X_i − Y_i|²`` over the last two axes:
    ``(…, n, p), (…, n, p) → (…)``. Neuron i of X is paired with neuron i of Y."""
    if X.shape != Y.shape:
        raise InputError(f"coupled particles must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    return ((X - Y) ** 2).sum(-1).mean(-1)


def output_gap(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖f − g‖ = ((1/m) Σ_j (f_j − g_j)²)^{1/2}`` over the last axis (``⟨·,·⟩`` of §1)."""
    if f.shape != g.shape:
        raise InputError(f"outputs must have the same shape, got {tuple(f.shape)} and {tuple(g.shape)}")
    return ((f - g) ** 2).mean(-1).sqrt()


def wasserstein2(X: torch.Tensor, Y: torch.Tensor, *, exact_max: int = 5000, projections: int = 200,
                 seed: int = 0) -> float:
    """W2 between the empirical measures of ``X (n, p)`` and ``Y (n', p)`` (uniform weights).

    Exact (POT's network simplex, ``ot.emd2`` on squared Euclidean costs) when both have at
    most ``exact_max`` points; above, the sliced W2 (``ot.sliced_wasserstein_distance``
    with ``projections`` random directions), which is a lower bound of W2 of the same
    order. Note: two independent samples of one law in R^p are already far apart in W2
    when p ≳ 5, so compare *coupled* systems where possible (THEORY.md §2)."""
    import numpy as np
    import ot

    if X.dim() != 2 or Y.dim() != 2 or X.shape[1] != Y.shape[1]:
        raise InputError(f"point clouds must be (n, p) and (n', p), got {tuple(X.shape)} and {tuple(Y.shape)}")
    x, y = X.detach().cpu().double().numpy(), Y.detach().cpu().double().numpy()
    if max(len(x), len(y)) <= exact_max:
        M = ot.dist(x, y)  # squared Euclidean
        return float(np.sqrt(max(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), M, numItermax=10_000_000), 0.0)))
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=projections, seed=seed))
