"""Curvature and noise-geometry diagnostics, matrix-free.

* Hessian-vector products (``torch.func``), the top Hessian eigenvalue (Lanczos) and the
  mean-field sharpness of a particle system;
* the Hessian–variance alignment of dropout noise for any ``torch.nn`` model (below).

Alignment (THEORY.md §3).

For a ``torch.nn`` model with dropout layers, parameters θ (all of them, flattened),
a loss and a batch:

    g(δ) = ∇_θ ℓ(θ; δ)                  dropout gradient under masks δ
    Σ    = Cov_δ g(δ)                   noise covariance
    H    = E_δ ∇²_θ ℓ(θ; δ) = ∇² L_S    Hessian of the expected (modified) loss
    α    = Tr(HΣ) / (‖H‖_F ‖Σ‖_F)

Unbiased estimators from independent mask draws δ₁, δ₂, … (each a fresh draw of every
dropout layer's mask, per example as in ``nn.Dropout``) and Rademacher probes z:

    Tr(HΣ)  = E[ dᵀ H(δ₃) d ] / 2,           d = g(δ₁) − g(δ₂)   (Cov d = 2Σ)
    ‖Σ‖_F²  = E[ (d₁ · d₂)² ] / 4,           d₁, d₂ two independent differences
                                             (averaged over all pairs of M differences)
    ‖H‖_F²  = E[ (H(δ_a) z) · (H(δ_b) z) ]   (two masks: no bias from H's own noise)

with H(δ)v a Hessian-vector product (double backward). Each has a standard error; the
interval for α is the delta method on the three independent means. ``exact=True``
enumerates every mask of a small model and batch (at most 2¹⁶) and forms H and Σ
densely. Masks are imposed by forward hooks on the dropout modules, so any model with
``torch.nn.Dropout`` or ``dropdyn.nets.Dropout`` layers works unchanged.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, jvp

from ._checks import check_int
from .model import risk
from .nets import Dropout as NetsDropout


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


def _dropout_layers(model: nn.Module) -> list[tuple[nn.Module, float, bool]]:
    """(module, keep, inverted) for every dropout layer that drops something."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            out.append((m, 1.0 - m.p, True))
        elif isinstance(m, NetsDropout) and m.keep < 1:
            out.append((m, m.keep, m.inverted))
    if not out:
        raise ValueError("the model has no dropout layer (or only keep = 1): dropout noise is zero and "
                         "the alignment α is undefined")
    return out


@contextmanager
def _masks(model: nn.Module, draw):
    """Within the block, dropout layer i outputs x·mask·(1/keep if inverted) with
    ``mask = draw(i, x.shape)`` (a {0, 1} tensor)."""
    layers = _dropout_layers(model)
    handles = []
    for i, (m, keep, inverted) in enumerate(layers):
        def hook(mod, inp, out, i=i, keep=keep, inverted=inverted):
            x = inp[0]
            mask = draw(i, x.shape).to(x.dtype)
            return x * mask / keep if inverted else x * mask
        handles.append(m.register_forward_hook(hook))
    was = model.training
    model.train()
    try:
        yield layers
    finally:
        for h in handles:
            h.remove()
        model.train(was)


class _Problem:
    """Gradients and Hessian-vector products of ℓ(θ; δ) for masks drawn from a generator."""

    def __init__(self, model, loss_fn, inputs, targets, generator):
        self.model, self.loss_fn, self.inputs, self.targets = model, loss_fn, inputs, targets
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.gen = generator
        self.layers = _dropout_layers(model)

    def _draw(self, i, shape):
        keep = self.layers[i][1]
        return torch.rand(shape, generator=self.gen, device=self.inputs.device) < keep

    def _loss(self, draw):
        with _masks(self.model, draw):
            return self.loss_fn(self.model(self.inputs), self.targets)

    def grad(self, draw=None) -> torch.Tensor:
        loss = self._loss(draw or self._draw)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self.params)]).detach()

    def hvp(self, v: torch.Tensor, draw=None) -> torch.Tensor:
        loss = self._loss(draw or self._draw)
        gs = torch.autograd.grad(loss, self.params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in gs])
        hv = torch.autograd.grad(flat @ v, self.params)
        return torch.cat([h.reshape(-1) for h in hv]).detach()


@dataclass
class Alignment:
    """α with its interval and the three estimated quantities (each ``(mean, se)``).
    ``baseline`` is the paper's random-matrix reference in expectation: for H and Σ with
    their spectra and independent Haar eigenvectors, E Tr(HΣ) = Tr H·Tr Σ/D while the
    norms are unchanged, so the mean baseline α is Tr H·Tr Σ/(D‖H‖_F‖Σ‖_F)."""

    alpha: float
    ci: tuple[float, float]
    trace_HS: tuple[float, float]
    fro_H_sq: tuple[float, float]
    fro_S_sq: tuple[float, float]
    samples: int
    parameters: int
    exact: bool = False
    baseline: float = float("nan")


def _mean_se(xs: list[float]) -> tuple[float, float]:
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t.mean()), (float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan"))


def _pairs_u_statistic(diffs: torch.Tensor) -> tuple[float, float]:
    """‖Σ‖_F² from M independent differences d_a (Cov d = 2Σ): the U-statistic
    mean_{a<b} (d_a·d_b)²/4 over all M(M−1)/2 pairs, and its standard error
    2·std_a(mean_{b≠a} h_ab)/√M (Hoeffding's first-order term)."""
    G = diffs.double() @ diffs.double().T
    h = G * G / 4
    M = len(G)
    off = h.sum() - h.diagonal().sum()
    mean = float(off / (M * (M - 1)))
    row = (h.sum(1) - h.diagonal()) / (M - 1)
    return mean, float(2 * row.std() / math.sqrt(M))


def alignment(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *, samples: int = 100,
              seed: int = 0, confidence: float = 0.95, exact: bool = False) -> Alignment:
    """Estimate α(θ) = Tr(HΣ)/(‖H‖_F‖Σ‖_F) over all parameters (module docstring)."""
    if not torch.is_floating_point(inputs) or not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs must be finite floating-point values (NaN or inf found)")
    if torch.is_floating_point(targets) and not bool(torch.isfinite(targets).all()):
        raise ValueError("targets contain non-finite values (NaN or inf)")
    samples = check_int("samples", samples, 2)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if exact:
        return _exact(model, loss_fn, inputs, targets)
    g = torch.Generator(device=inputs.device).manual_seed(seed)
    prob = _Problem(model, loss_fn, inputs, targets, g)
    T, A, trH, diffs = [], [], [], []
    for _ in range(samples):
        d = prob.grad() - prob.grad()
        T.append(float(d @ prob.hvp(d)) / 2)
        diffs.append(prob.grad() - prob.grad())
        z = (torch.randint(0, 2, d.shape, generator=g, device=d.device) * 2 - 1).to(d.dtype)
        hz = prob.hvp(z)
        A.append(float(hz @ prob.hvp(z)))
        trH.append(float(z @ hz))
    (t, st), (a, sa) = _mean_se(T), _mean_se(A)
    D = torch.stack(diffs)
    b, sb = _pairs_u_statistic(D)
    trS = float((D.double() ** 2).sum(1).mean() / 2)
    alpha = t / math.sqrt(max(a, 1e-300) * max(b, 1e-300))
    rel = math.sqrt((st / t) ** 2 + (sa / (2 * a)) ** 2 + (sb / (2 * b)) ** 2) if t and a > 0 and b > 0 else math.inf
    from scipy.stats import norm

    half = norm.ppf(0.5 + confidence / 2) * abs(alpha) * rel
    baseline = _mean_se(trH)[0] * trS / (len(d) * math.sqrt(max(a, 1e-300) * max(b, 1e-300)))
    return Alignment(alpha, (float(alpha - half), float(alpha + half)), (t, st), (a, sa), (b, sb), samples, len(d),
                     baseline=baseline)


MAX_EXACT_MASKS = 2**16


def _exact(model, loss_fn, inputs, targets) -> Alignment:
    """α from the dense H and Σ of :func:`exact_matrices`."""
    H, S, n_masks = exact_matrices(model, loss_fn, inputs, targets)
    D = len(H)
    t, a, b = float((H * S).sum()), float((H * H).sum()), float((S * S).sum())
    alpha = matrix_alignment(H, S)
    baseline = float(H.trace() * S.trace() / (D * math.sqrt(a * b)))
    return Alignment(alpha, (alpha, alpha), (t, 0.0), (a, 0.0), (b, 0.0), n_masks, D, exact=True, baseline=baseline)


def exact_matrices(model, loss_fn, inputs, targets) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Dense ``H = E_δ ∇²ℓ(θ; δ)`` and ``Σ = Cov_δ ∇ℓ(θ; δ)`` (float64, D × D) by enumerating
    every mask of every dropout layer on this batch (at most 2¹⁶), and the mask count."""
    layers = _dropout_layers(model)
    shapes: list[tuple[int, tuple]] = []  # (layer index, activation shape) in call order

    def record(i, shape):
        shapes.append((i, tuple(shape)))
        return torch.ones(shape, dtype=torch.bool)

    with torch.no_grad(), _masks(model, record):
        model(inputs)
    sizes = [math.prod(s) for _, s in shapes]
    total = sum(sizes)
    if total > 16:
        raise ValueError(f"exact alignment enumerates 2^{total} masks (dropout units × batch), more than "
                         f"{MAX_EXACT_MASKS}; use the estimator (exact=False) or a smaller model or batch")
    prob = _Problem(model, loss_fn, inputs, targets, None)
    D = sum(p.numel() for p in prob.params)
    grads, hess, weights = [], torch.zeros(D, D, dtype=torch.float64), []
    eye = torch.eye(D, dtype=inputs.dtype)
    for bits in itertools.product([False, True], repeat=total):
        chunks = dict(zip((i for i, _ in shapes), torch.split(torch.tensor(bits), sizes), strict=True))
        w = 1.0
        for i, c in chunks.items():
            keep, k = layers[i][1], int(c.sum())
            w *= keep**k * (1 - keep) ** (len(c) - k)

        def draw(i, shape, chunks=chunks):
            return chunks[i].reshape(shape)

        grads.append(prob.grad(draw).double())
        hess += w * torch.stack([prob.hvp(eye[j], draw).double() for j in range(D)])
        weights.append(w)
    W = torch.tensor(weights, dtype=torch.float64)
    G = torch.stack(grads)
    mean = (W[:, None] * G).sum(0)
    C = G - mean
    S = (W[:, None, None] * C[:, :, None] * C[:, None, :]).sum(0)
    return 0.5 * (hess + hess.T), S, len(W)


def matrix_alignment(H: torch.Tensor, S: torch.Tensor) -> float:
    """α = Tr(HS)/(‖H‖_F‖S‖_F) for dense symmetric matrices."""
    return float((H * S).sum() / (H.norm() * S.norm()))


def random_baseline(H: torch.Tensor, S: torch.Tensor, samples: int = 100, seed: int = 0) -> float:
    """The paper's baseline: mean α between two matrices with the spectra of H and S and
    independent random (Haar) eigenvectors."""
    g = torch.Generator().manual_seed(seed)
    eh, es = torch.linalg.eigvalsh(H.double()), torch.linalg.eigvalsh(S.double())
    D = len(eh)
    vals = []
    for _ in range(samples):
        Q1, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        Q2, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        vals.append(matrix_alignment(Q1 @ torch.diag(eh) @ Q1.T, Q2 @ torch.diag(es) @ Q2.T))
    return float(torch.tensor(vals).mean())


def noise_along_curvature(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *, k: int = 10,
                          hessian_masks: int = 8, samples: int = 100, seed: int = 0) -> dict:
    """Variance of the dropout noise along the Hessian's top eigenvectors (SME paper,
    appendix B). Lanczos (``eigsh``) finds the top ``k`` eigenpairs (λ_j, v_j) of
    H_M = mean of ∇²ℓ(θ; δ_m) over ``hessian_masks`` fixed mask draws (fixed, so that the
    operator is deterministic); the variance along v_j is v_jᵀΣv_j = E[(d·v_j)²]/2 over
    ``samples`` fresh differences d of two dropout gradients. Returns NumPy arrays
    ``curvature``, ``variance``, ``variance_se`` (descending curvature) and the unit
    ``directions`` (D × k)."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    k = check_int("k", k, 1)
    hessian_masks = check_int("hessian_masks", hessian_masks, 1)
    samples = check_int("samples", samples, 2)
    g = torch.Generator(device=inputs.device)
    prob = _Problem(model, loss_fn, inputs, targets, g)
    N = sum(p.numel() for p in prob.params)
    dtype = prob.params[0].dtype

    def matvec(v):
        g.manual_seed(seed)  # the same masks at every call
        t = torch.as_tensor(np.asarray(v, dtype=np.float64).ravel(), dtype=dtype, device=inputs.device)
        return (sum(prob.hvp(t) for _ in range(hessian_masks)) / hessian_masks).double().cpu().numpy()

    vals, vecs = eigsh(LinearOperator((N, N), matvec=matvec, dtype=np.float64), k=k, which="LA", tol=1e-6,
                       v0=np.random.default_rng(seed).standard_normal(N))
    order = np.argsort(vals)[::-1]
    vals, V = vals[order], torch.as_tensor(vecs[:, order], dtype=dtype, device=inputs.device)
    g.manual_seed(seed + 1)
    proj = torch.stack([(prob.grad() - prob.grad()) @ V for _ in range(samples)]).double()  # (samples, k)
    var = (proj**2 / 2).mean(0)
    se = (proj**2 / 2).std(0) / math.sqrt(samples)
    return {"curvature": vals, "variance": var.cpu().numpy(), "variance_se": se.cpu().numpy(),
            "directions": V.double().cpu().numpy()}


def flatness(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *, probes: int = 50,
             seed: int = 0) -> dict:
    """Sharpness of a solution: the top eigenvalue (Lanczos) and the trace (Hutchinson,
    with its standard error) of the Hessian of the loss of the model in evaluation mode
    (no dropout), over all parameters."""
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

        top = top_eigenvalue(fn, flat, seed=seed)
        g = torch.Generator(device=flat.device).manual_seed(seed)
        tr = []
        for _ in range(probes):
            z = (torch.randint(0, 2, flat.shape, generator=g, device=flat.device) * 2 - 1).to(flat.dtype)
            tr.append(float(z @ hvp(fn, flat, z)))
    finally:
        model.train(was)
    mean, se = _mean_se(tr)
    return {"top_eigenvalue": top, "trace": mean, "trace_se": se}
