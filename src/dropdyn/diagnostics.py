"""Curvature diagnostics, matrix-free (Hessian-vector products by ``torch.func``)."""

from __future__ import annotations

import torch
from torch.func import grad, jvp

from .model import risk


def hvp(fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ``∇²fn(x) v`` (forward-over-reverse)."""
    return jvp(grad(fn), (x,), (v,))[1]


def top_eigenvalue(fn, x: torch.Tensor, *, tol: float = 1e-8, seed: int = 0) -> float:
    """Largest (most positive) eigenvalue of ``∇²fn(x)``, matrix-free: Lanczos (SciPy's
    ARPACK ``eigsh``, ``which="LA"``) on Hessian-vector products. Plain power iteration
    finds the largest *magnitude* and converges slowly when the top eigenvalues are close
    (a case the tests include), so the Krylov method is used instead."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    shape, N = x.shape, x.numel()

    def matvec(v):
        t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(shape), dtype=x.dtype, device=x.device)
        return hvp(fn, x, t).reshape(-1).double().cpu().numpy()

    if N == 1:
        return float(matvec(np.ones(1))[0])
    v0 = np.random.default_rng(seed).standard_normal(N)
    vals = eigsh(LinearOperator((N, N), matvec=matvec, dtype=np.float64), k=1, which="LA", tol=tol, v0=v0,
                 return_eigenvectors=False)
    return float(vals[0])


def mean_field_sharpness(particles: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                         activation: str = "tanh", **kw) -> float:
    """Top eigenvalue of ``n ∇²R`` in particle coordinates: the curvature that a
    mean-field GD step X_i ← X_i − τ∇V(X_i) = X_i − τ n ∂R/∂X_i sees. GD on the
    quadratic model is stable iff τ < 2/λ."""
    n = particles.shape[-2]
    return top_eigenvalue(lambda X: n * risk(X, inputs, targets, activation), particles, **kw)
