"""Distances between coupled particle systems and between predictors (THEORY.md §2)."""

from __future__ import annotations

import torch


def particle_distance(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Coupled particle-wise distance ``(1/n) Σ_i |X_i − Y_i|²`` over the last two axes:
    ``(…, n, p), (…, n, p) → (…)``. Neuron i of X is paired with neuron i of Y."""
    if X.shape != Y.shape:
        raise ValueError(f"coupled particles must have the same shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    return ((X - Y) ** 2).sum(-1).mean(-1)


def output_gap(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖f − g‖ = ((1/m) Σ_j (f_j − g_j)²)^{1/2}`` over the last axis (``⟨·,·⟩`` of §1)."""
    if f.shape != g.shape:
        raise ValueError(f"outputs must have the same shape, got {tuple(f.shape)} and {tuple(g.shape)}")
    return ((f - g) ** 2).mean(-1).sqrt()
