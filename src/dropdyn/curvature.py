"""Curvature, matrix-free: Hessian-vector products (``torch.func``), the top Hessian
eigenvalue (Lanczos), the mean-field sharpness of a particle system, and the flatness
(top eigenvalue and trace) of a ``torch.nn`` model's loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import grad, vjp

from ._checks import check_choice, check_int
from .model import risk


def hvp(fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ``∇²fn(x) v``, reverse-over-reverse (``vjp`` of ``grad``; the
    Hessian is symmetric). Forward-over-reverse (``jvp(grad(fn))``) is cheaper but fails
    with mean-reduced ``nn.MSELoss`` ("ZeroTensors are immutable", a PyTorch bug)."""
    return vjp(grad(fn), x)[1](v)[0]


WHICH = {"largest": "LA", "magnitude": "LM"}


def top_eigenvalue(fn, x: torch.Tensor, *, tol: float = 1e-8, seed: int = 0, which: str = "largest") -> float:
    """The top eigenvalue of ``∇²fn(x)``, matrix-free: Lanczos (SciPy's ARPACK ``eigsh``) on
    Hessian-vector products. ``which="largest"`` (default): the largest *algebraic*
    eigenvalue, the curvature that bounds a stable step; ``which="magnitude"``: the
    eigenvalue of largest |λ| (signed), what power iteration — and so PyHessian — returns.
    They differ when the most negative eigenvalue is larger in size than the most positive.
    Power iteration also converges slowly when the top eigenvalues are close (a case the
    tests include), so the Krylov method is used for both."""
    import numpy as np

    check_choice("which", which, WHICH)

    shape, N = x.shape, x.numel()

    def matvec(v):
        t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(shape), dtype=x.dtype, device=x.device)
        return hvp(fn, x, t).reshape(-1).double().cpu().numpy()

    if N == 1:
        return float(matvec(np.ones(1))[0])
    return float(_top_eigs(matvec, N, 1, tol, seed, vectors=False, which=WHICH[which])[0])


def _top_eigs(matvec, N: int, k: int, tol: float, seed: int, vectors: bool, which: str = "LA"):
    """The ``k`` largest algebraic eigenvalues (and eigenvectors, with ``vectors``) of the
    symmetric operator ``matvec`` on R^N by Lanczos (ARPACK ``eigsh``). An operator that
    vanishes on a random start vector is (almost surely) zero, where ARPACK cannot start:
    its eigenvalues are 0 and any orthonormal vectors are eigenvectors."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    v0 = np.random.default_rng(seed).standard_normal(N)
    if not np.any(matvec(v0)):
        vals = np.zeros(k)
        return (vals, np.eye(N, k)) if vectors else vals
    return eigsh(LinearOperator((N, N), matvec=matvec, dtype=np.float64), k=k, which=which, tol=tol, v0=v0,
                 return_eigenvectors=vectors)


def mean_field_sharpness(particles: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                         activation: str = "tanh", **kw) -> float:
    """Top eigenvalue of ``n ∇²R`` in particle coordinates: the curvature that a
    mean-field GD step X_i ← X_i − τ∇V(X_i) = X_i − τ n ∂R/∂X_i sees. GD on the
    quadratic model is stable iff τ < 2/λ."""
    n = particles.shape[-2]
    return top_eigenvalue(lambda X: n * risk(X, inputs, targets, activation), particles, **kw)


def bypass_terms(particles: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                 activation: str = "tanh", loss: str = "squared") -> dict[str, float]:
    """The three terms of the sharpness-bypass expansion (docs/theory.md §2) at particles
    ``(n, p)`` (``(n, K + d [+ 1])`` with K outputs, the cross-entropy's): a step
    x_i ← x_i − τ η_i ∇V(x_i) with i.i.d. multipliers η changes the risk by
    E ΔR ≈ −τ E[η] A + ½τ² (E[η]² B + E[η²] C), up to an O(1/n) diagonal term, with

        A = (1/n) Σ_i ‖∇V_i‖²                    the first-order descent
        B = (1/m) Σ_j v_jᵀ ∇²ℓ_j v_j,            the interaction (kernel, Gauss–Newton) term,
            v = (1/n) Σ_i Dφ_i ∇V_i              (‖v‖²/m for the squared loss)
        C = (1/n) Σ_i ∇V_iᵀ ∇²V_i ∇V_i           each neuron's own curvature, r held fixed

    (∇V_i = Dφ(x_i)ᵀ r / m, r = ∂ℓ/∂f the loss's residual, ``targets`` as
    :func:`dropdyn.losses.encode` holds them). B is one forward-mode derivative of the
    predictor along ∇V and one of the residual along v, C one Hessian-vector product of
    Σ_i V(x_i) with r fixed: no matrix is formed."""
    from torch.func import jvp

    from .losses import get_loss
    from .model import predict

    lo = get_loss(loss)
    X = particles.detach()
    n, K = X.shape[0], (targets.shape[-1] if targets.dim() > 1 else 1)
    out = lambda Y: predict(Y, inputs, activation, outputs=K)  # noqa: E731
    f = out(X).detach()
    r = lo.residual(f, targets).detach()
    potential = lambda Y: (out(Y) * r).sum() / r.shape[0] * Y.shape[0]  # noqa: E731  Σ_i V(y_i)
    G = grad(potential)(X)  # rows ∇V_i
    v = jvp(out, (X,), (G,))[1]  # (1/n) Σ_i Dφ_i ∇V_i, on the m samples
    curved = jvp(lambda F: lo.residual(F, targets), (f,), (v,))[1]  # ∇²ℓ_j v_j
    A = float((G * G).sum()) / n
    B = float((v * curved).sum()) / r.shape[0]
    C = float((G * hvp(potential, X, G)).sum()) / n
    return {"A": A, "B": B, "C": C}


def module_bypass_terms(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """A, B, C of the bypass expansion for a ``torch.nn`` model (its parameters θ, all of
    them; the model as it is, so put it in eval mode for the network without dropout) and
    a loss ``loss_fn(outputs, targets)`` (a mean over samples): with g = ∇_θ L,

        A = ‖g‖²,   B = (Jg)ᵀ ∇²_f L (Jg)  (the Gauss–Newton part: the interaction of units),
        C = gᵀ∇²L g − B                     (the part through each unit's own second derivatives),

    J the Jacobian of the outputs in θ. Matrix-free: one forward-mode derivative of the
    outputs along g, one of ∇_f L along Jg, and one Hessian-vector product. For a network
    with one hidden layer C is, as for particles, the sum over hidden units of each unit's
    curvature with the residual fixed; B also holds the O(1/width) diagonal of the
    Gauss–Newton part."""
    from torch.func import functional_call, jvp

    names = [k for k, p in model.named_parameters() if p.requires_grad]
    theta = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def outputs(th):
        return functional_call(model, th, (inputs,))

    def loss(th):
        return loss_fn(outputs(th), targets)

    g = torch.func.grad(loss)(theta)
    f, v = jvp(outputs, (theta,), (g,))
    f = f.detach()
    curved = jvp(torch.func.grad(lambda F: loss_fn(F, targets)), (f,), (v,))[1]
    gHg = jvp(torch.func.grad(loss), (theta,), (g,))[1]
    A = sum(float((g[k] * g[k]).sum()) for k in names)
    B = float((v * curved).sum())
    return {"A": A, "B": B, "C": sum(float((g[k] * gHg[k]).sum()) for k in names) - B}


def flatness(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *, probes: int = 50,
             seed: int = 0, which: str = "largest") -> dict:
    """Sharpness of a solution: the top eigenvalue (Lanczos; ``which`` as in
    :func:`top_eigenvalue`) and the trace (Hutchinson, with its standard error) of the
    Hessian of the loss of the model in evaluation mode (no dropout), over all parameters."""
    from torch.func import functional_call

    probes = check_int("probes", probes, 2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if p.requires_grad])
    was = model.training
    model.eval()
    try:
        def fn(theta):
            parts = torch.split(theta, [math.prod(s) for s in shapes])
            params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
            return loss_fn(functional_call(model, params, (inputs,)), targets)

        top = top_eigenvalue(fn, flat, seed=seed, which=which)
        g = torch.Generator(device=flat.device).manual_seed(seed)
        tr = []
        for _ in range(probes):
            z = (torch.randint(0, 2, flat.shape, generator=g, device=flat.device) * 2 - 1).to(flat.dtype)
            tr.append(float(z @ hvp(fn, flat, z)))
    finally:
        model.train(was)
    tr = torch.tensor(tr, dtype=torch.float64)
    return {"top_eigenvalue": top, "trace": float(tr.mean()), "trace_se": float(tr.std() / math.sqrt(probes))}
