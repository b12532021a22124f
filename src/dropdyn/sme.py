"""Stochastic modified equations of dropout (docs/theory.md §3, the SME paper).

Standard parametrisation, no 1/width: ``f_θ(x) = Σ_r a_r σ(w_rᵀx)``. Parameters ``theta``
have shape ``(..., width, d + 1)``, row ``q_r = (a_r, w_r)`` (leading dimensions are
replicas); ``inputs`` ``(N, d)``, ``targets`` ``(N,)``; keep probability ``p``. Dropout
scales neuron r by ``δ_r ∈ {1/p w.p. p, 0}``; write ``δ_r = 1 + ε_r`` and

    u_ri = a_r σ(w_rᵀx_i),  e_i = Σ_r u_ri − y_i,  φ_ri = ∇_{q_r} u_ri = (σ_ri, a_r σ'_ri x_i),
    c₂ = Var ε = (1 − p)/p,  κ = E ε³ / c₂ = (1 − 2p)/p.

Modified loss (eq. 7) and its gradient:

    L_S(θ) = (1/2N) Σ_i e_i² + (c₂/2N) Σ_i Σ_r u_ri²,   ∇_{q_k} L_S = (1/N) Σ_i (e_i + c₂ u_ki) φ_ki.

**Exact factorisation of the noise covariance.** The dropout gradient is
``g_k(δ) = (1/N) Σ_i δ_k e_i(δ) φ_ki``, a quadratic polynomial in ε. A two-point ε
satisfies ``ε² = c₂ + κ ε``, so

    g_k − ∇_{q_k} L_S = (1/N) Σ_i φ_ki [ε_k (e_i + κ u_ki) + Σ_r ε_r u_ri + Σ_{r≠k} ε_k ε_r u_ri],

and the variables ``{ε_a/√c₂} ∪ {ε_a ε_b / c₂ : a < b}`` are uncorrelated with unit
variance. Hence ``Σ(θ) = Cov_δ g = F Fᵀ`` exactly, with ``F`` of size
``D × (width + width(width − 1)/2)`` applied as

    (F z)_k = (1/N) Σ_i φ_ki [√c₂ (z_k (e_i + κ u_ki) + Σ_a z_a u_ai) + c₂ Σ_{r≠k} Z_kr u_ri]

(``z`` ∈ R^width, ``Z`` symmetric width × width with zero diagonal holding the pair
coordinates). ``F z`` with standard normal ``z, Z`` is a Gaussian vector with covariance
exactly Σ — the same law as ``Σ^{1/2} z`` — so the SME diffusion needs no square root and
no Krylov iteration: one application of F costs one "matvec". ``Σ v = F (Fᵀ v)``. Both
cost ``O(width·N·d + width²·N)``: the pair term couples all neurons through the samples
(``B = ψ uᵀ``), which no exact method avoids; it is linear in width·N·d while width ≲ d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import InputError, check_finite, check_keep, check_positive
from .model import get_activation

Tensor = torch.Tensor

DENSE_LIMIT_BYTES = 2 * 1024**3
"""``to_dense`` refuses matrices larger than this (2 GiB) unless asked for more."""


def mask_moments(keep: float) -> tuple[float, float]:
    """``(c₂, κ)`` of ``ε = δ − 1``: ``c₂ = Var ε = (1 − p)/p``, ``κ = E ε³ / c₂ = (1 − 2p)/p``."""
    p = check_keep(keep)
    return (1 - p) / p, (1 - 2 * p) / p


def check_problem(theta: Tensor, inputs: Tensor, targets: Tensor) -> None:
    """Shapes ``theta (..., width, d + 1)``, ``inputs (N, d)``, ``targets (N,)``, N ≥ 1; real
    tensors of one dtype; all finite."""
    for name, t in (("theta", theta), ("inputs", inputs), ("targets", targets)):
        if not isinstance(t, Tensor):
            raise InputError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if not torch.is_floating_point(t):
            raise InputError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
    if not theta.dtype == inputs.dtype == targets.dtype:
        raise InputError(f"theta, inputs and targets must share one dtype, got {theta.dtype}, {inputs.dtype} and "
                         f"{targets.dtype}")
    if inputs.dim() != 2 or inputs.shape[0] < 1:
        raise InputError(f"inputs must be (N, d) with N >= 1, got shape {tuple(inputs.shape)}")
    if targets.shape != inputs.shape[:1]:
        raise InputError(f"targets must be (N,) = ({inputs.shape[0]},), got shape {tuple(targets.shape)}")
    if theta.dim() < 2 or theta.shape[-1] != inputs.shape[1] + 1:
        raise InputError(f"theta must be (..., width, d + 1) = (..., width, {inputs.shape[1] + 1}), "
                         f"got shape {tuple(theta.shape)}")
    check_finite("theta", theta)
    check_finite("inputs", inputs)
    check_finite("targets", targets)


@dataclass
class Features:
    """Per-neuron, per-sample quantities at θ: ``h = σ(w_rᵀx_i)``, ``dh = σ'(·)``,
    ``u = a h`` — each ``(..., width, N)`` — ``a`` ``(..., width)``, residual ``e`` ``(..., N)``."""

    a: Tensor
    h: Tensor
    dh: Tensor
    u: Tensor
    e: Tensor
    inputs: Tensor
    ddh: Tensor | None = None

    @classmethod
    def at(cls, theta: Tensor, inputs: Tensor, targets: Tensor, activation: str = "tanh",
           second: bool = False) -> Features:
        """Features at θ; ``second=True`` adds ``ddh = σ''(w_rᵀx_i)`` (for Hessian-vector products)."""
        act = get_activation(activation)
        a = theta[..., 0]
        z = theta[..., 1:] @ inputs.T
        h = act.fn(z)
        u = a[..., None] * h
        if second:
            dh, ddh = torch.func.jvp(act.deriv, (z,), (torch.ones_like(z),))
        else:
            dh, ddh = act.deriv(z), None
        return cls(a, h, dh, u, u.sum(-2) - targets, inputs, ddh)

    def contract(self, R: Tensor) -> Tensor:
        """``(1/N) Σ_i R_ki φ_ki`` for coefficients ``R`` ``(..., width, N)`` → ``(..., width, d + 1)``."""
        N = R.shape[-1]
        grad_a = (R * self.h).sum(-1, keepdim=True)
        grad_w = self.a[..., None] * ((R * self.dh) @ self.inputs)
        return torch.cat([grad_a, grad_w], dim=-1) / N

    def directional(self, v: Tensor, s: Tensor | None = None) -> Tensor:
        """``ψ_ki = φ_kiᵀ v_k`` for ``v`` ``(..., width, d + 1)`` → ``(..., width, N)``
        (``s = v_w Xᵀ`` if already computed)."""
        s = v[..., 1:] @ self.inputs.T if s is None else s
        return v[..., :1] * self.h + self.a[..., None] * self.dh * s

    def gradient(self, c2: float) -> Tensor:
        """``∇L_S = (1/N) Σ_i (e_i + c₂ u_ki) φ_ki``."""
        return self.contract(self.e[..., None, :] + c2 * self.u)


def predict_standard(theta: Tensor, inputs: Tensor, activation: str = "tanh", mask: Tensor | None = None) -> Tensor:
    """``f_θ(x_i; δ) = Σ_r δ_r a_r σ(w_rᵀx_i)`` → ``(..., N)`` (``mask`` δ: ``(..., width)``)."""
    u = theta[..., 0, None] * get_activation(activation).fn(theta[..., 1:] @ inputs.T)
    if mask is not None:
        u = u * mask[..., None]
    return u.sum(-2)


def risk_standard(theta: Tensor, inputs: Tensor, targets: Tensor, activation: str = "tanh") -> Tensor:
    """``R_S(θ) = (1/2N) Σ_i (f_θ(x_i) − y_i)²`` → ``(...)``."""
    return 0.5 * (predict_standard(theta, inputs, activation) - targets).square().mean(-1)


def modified_loss(theta: Tensor, inputs: Tensor, targets: Tensor, keep: float, activation: str = "tanh") -> Tensor:
    """``L_S(θ) = R_S(θ) + (1 − p)/(2Np) Σ_i Σ_r a_r² σ(w_rᵀx_i)²`` (eq. 7) → ``(...)``."""
    c2, _ = mask_moments(keep)
    F = Features.at(theta, inputs, targets, activation)
    return 0.5 * F.e.square().mean(-1) + 0.5 * c2 * F.u.square().sum(-2).mean(-1)


def modified_loss_grad(theta: Tensor, inputs: Tensor, targets: Tensor, keep: float,
                       activation: str = "tanh") -> Tensor:
    """Closed-form ``∇L_S``: ``∇_{q_k} L_S = (1/N) Σ_i (e_i + c₂ u_ki) φ_ki`` → shape of ``theta``."""
    return Features.at(theta, inputs, targets, activation).gradient(mask_moments(keep)[0])


def dropout_gradient(theta: Tensor, inputs: Tensor, targets: Tensor, mask: Tensor,
                     activation: str = "tanh") -> Tensor:
    """``∇_θ R_S^drop(θ; δ)`` (eq. 5): ``g_k = (1/N) Σ_i δ_k e_i(δ) φ_ki`` with
    ``e_i(δ) = Σ_r δ_r u_ri − y_i``; ``mask`` δ ``(..., width)`` → shape of ``theta``."""
    F = Features.at(theta, inputs, targets, activation)
    e_drop = (mask[..., None] * F.u).sum(-2) - targets
    return F.contract(mask[..., None] * e_drop[..., None, :])


def _hvp(f: Features, c2: float, v: Tensor) -> Tensor:
    """Closed-form ``H v`` of L_S from features with ``ddh`` (see :func:`hessian_vector_product`)."""
    N = f.e.shape[-1]
    s = v[..., 1:] @ f.inputs.T
    psi = f.directional(v, s)
    R = f.e[..., None, :] + c2 * f.u
    first = f.contract(psi.sum(-2, keepdim=True) + c2 * psi)
    Rdh = R * f.dh
    second_a = (Rdh * s).sum(-1, keepdim=True)
    second_w = (v[..., :1] * Rdh + f.a[..., None] * R * f.ddh * s) @ f.inputs
    return first + torch.cat([second_a, second_w], dim=-1) / N


def hessian_vector_product(theta: Tensor, inputs: Tensor, targets: Tensor, keep: float, v: Tensor,
                           activation: str = "tanh") -> Tensor:
    """``H v`` with ``H = ∇²L_S(θ)``, in closed form: with ``ψ_ki = φ_kiᵀ v_k``,
    ``s_ki = x_iᵀ v_{k,w}`` and ``R_ki = e_i + c₂ u_ki``,

        (H v)_k = (1/N) Σ_i [(Σ_r ψ_ri + c₂ ψ_ki) φ_ki + R_ki (σ'_ki s_ki, (v_{k,a} σ'_ki + a_k σ''_ki s_ki) x_i)].
    """
    c2, _ = mask_moments(keep)
    return _hvp(Features.at(theta, inputs, targets, activation, second=True), c2, v)


def order2_drift(theta: Tensor, inputs: Tensor, targets: Tensor, keep: float, lr: float,
                 activation: str = "tanh") -> Tensor:
    """``b₂ = −∇(L_S + (η/4)‖∇L_S‖²) = −(∇L_S + (η/2) H ∇L_S)`` (closed-form gradient and
    Hessian-vector product)."""
    return drift(Features.at(theta, inputs, targets, activation, second=True), mask_moments(keep)[0], lr, order=2)


def drift(f: Features, c2: float, lr: float, order: int) -> Tensor:
    """SME drift from features at θ: ``−∇L_S`` (order 1) or ``−(∇L_S + (η/2) H ∇L_S)``
    (order 2; ``f`` needs ``ddh``)."""
    g = f.gradient(c2)
    return -g if order == 1 else -(g + 0.5 * lr * _hvp(f, c2, g))


def _pairs(Z: Tensor) -> Tensor:
    """Symmetric, zero-diagonal matrix from the strict upper triangle of ``Z`` ``(..., m, m)``."""
    U = Z.triu(1)
    return U + U.transpose(-1, -2)


class NoiseCovariance:
    """Σ(θ) = Cov_δ ∇_θ R_S^drop(θ; δ) as an operator, via its exact factor F (module doc).

    ``theta`` may carry replica dimensions ``(..., width, d + 1)``; then every method acts
    per replica. Vectors have the shape of ``theta`` (a flat ``(D,)`` vector is accepted
    for an unbatched θ). ``Σ @ v`` is ``matvec(v)``. ``validate=False`` skips the checks of
    the problem (shapes, dtypes, finiteness), for a caller that made them once: the
    simulators build one operator per step, and the finiteness checks read the device.
    """

    def __init__(self, theta: Tensor, inputs: Tensor, targets: Tensor, keep: float, activation: str = "tanh",
                 second: bool = False, validate: bool = True):
        if validate:
            check_problem(theta, inputs, targets)
        self.c2, self.kappa = mask_moments(keep)
        self.theta_shape = tuple(theta.shape)
        self.width, self.cols = theta.shape[-2], theta.shape[-1]
        self.f = Features.at(theta, inputs, targets, activation, second)  # shared with the drift (``f``)
        self.dim = self.width * self.cols

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    # ------------------------------------------------------------------ the factor F
    def apply_factor(self, z: Tensor, Z: Tensor) -> Tensor:
        """``F [z; Z]`` for ``z`` ``(..., width)`` and symmetric zero-diagonal ``Z``
        ``(..., width, width)`` → shape of ``theta``."""
        f, s = self.f, math.sqrt(self.c2)
        R = s * (z[..., None] * (f.e[..., None, :] + self.kappa * f.u) + (z[..., None] * f.u).sum(-2, keepdim=True))
        R = R + self.c2 * (Z @ f.u)
        return f.contract(R)

    def factor_transpose(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``Fᵀ v`` as ``(z, Z)``: ``z_a = (√c₂/N)[Σ_i ψ_ai (e_i + κ u_ai) + Σ_i u_ai Σ_k ψ_ki]``,
        ``Z_ab = (c₂/N)(B_ab + B_ba)`` for a ≠ b, ``B = ψ uᵀ``."""
        f, s, N = self.f, math.sqrt(self.c2), self.f.e.shape[-1]
        psi = f.directional(v)
        z = (psi * (f.e[..., None, :] + self.kappa * f.u)).sum(-1) + (f.u * psi.sum(-2, keepdim=True)).sum(-1)
        B = psi @ f.u.transpose(-1, -2)
        return s / N * z, _pairs(self.c2 / N * (B + B.transpose(-1, -2)))

    def matvec(self, v: Tensor) -> Tensor:
        """Exact ``Σ v = F (Fᵀ v)``, without forming Σ."""
        flat = v.dim() == 1
        v = self._as_theta(v)
        out = self.apply_factor(*self.factor_transpose(v))
        return out.reshape(-1) if flat else out

    __matmul__ = matvec

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One draw of ``N(0, Σ)`` per replica: ``F [z; Z]`` with standard normal ``z, Z``."""
        lead = self.theta_shape[:-2]
        like = dict(dtype=self.f.a.dtype, device=self.f.a.device, generator=generator)
        z = torch.randn(*lead, self.width, **like)
        Z = _pairs(torch.randn(*lead, self.width, self.width, **like))
        return self.apply_factor(z, Z)

    # ------------------------------------------------------------------ dense reference
    def factor_dense(self, limit_bytes: int = DENSE_LIMIT_BYTES) -> Tensor:
        """F as a dense ``D × (width + width(width − 1)/2)`` matrix (unbatched θ only)."""
        m = self.width
        pairs = torch.triu_indices(m, m, 1, device=self.f.a.device)
        K = m + pairs.shape[1]
        self._check_dense(self.dim * K, "F", limit_bytes)
        eye = torch.eye(m, dtype=self.f.a.dtype, device=self.f.a.device)
        lin = self.apply_factor(eye, torch.zeros(m, m, m, dtype=eye.dtype, device=eye.device))
        Zs = torch.zeros(pairs.shape[1], m, m, dtype=eye.dtype, device=eye.device)
        idx = torch.arange(pairs.shape[1], device=eye.device)
        Zs[idx, pairs[0], pairs[1]] = 1.0
        Zs[idx, pairs[1], pairs[0]] = 1.0
        cross = self.apply_factor(torch.zeros(pairs.shape[1], m, dtype=eye.dtype, device=eye.device), Zs)
        return torch.cat([lin.reshape(m, -1), cross.reshape(pairs.shape[1], -1)]).T

    def to_dense(self, limit_bytes: int = DENSE_LIMIT_BYTES) -> Tensor:
        """Σ as a dense ``D × D`` matrix ``F Fᵀ`` (small D only: refuses above ``limit_bytes``)."""
        self._check_dense(self.dim * self.dim, "Σ", limit_bytes)
        F = self.factor_dense(limit_bytes)
        return F @ F.T

    def _check_dense(self, entries: int, what: str, limit_bytes: int) -> None:
        if len(self.theta_shape) != 2:
            raise InputError(f"dense {what} needs an unbatched theta (width, d + 1), got {self.theta_shape}")
        need = entries * self.f.a.element_size()
        if need > limit_bytes:
            raise InputError(f"dense {what} for D = {self.dim} would need {need / 1024**3:.3g} GiB "
                             f"(limit {limit_bytes / 1024**3:.3g} GiB); use matvec/sample instead")

    def _as_theta(self, v: Tensor) -> Tensor:
        if v.dim() == 1 and len(self.theta_shape) == 2:
            if v.numel() != self.dim:
                raise InputError(f"vector must have D = {self.dim} entries, got {v.numel()}")
            return v.reshape(self.theta_shape)
        if tuple(v.shape[-2:]) != self.theta_shape[-2:]:
            raise InputError(f"vector must have the shape of theta {self.theta_shape}, got {tuple(v.shape)}")
        return v


def noise_covariance(theta: Tensor, inputs: Tensor, targets: Tensor, keep: float,
                     activation: str = "tanh") -> NoiseCovariance:
    """The exact dropout noise covariance Σ(θ) as an operator (see :class:`NoiseCovariance`).

    >>> g = torch.Generator().manual_seed(0)
    >>> theta = torch.randn(50, 8, generator=g, dtype=torch.float64)  # width 50, d = 7: D = 400
    >>> X, y = torch.randn(100, 7, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    >>> S = noise_covariance(theta, X, y, keep=0.5)
    >>> v = torch.randn(50, 8, generator=g, dtype=torch.float64)
    >>> bool(torch.allclose(S @ v, (S.to_dense() @ v.reshape(-1)).reshape(50, 8)))  # exact, matrix-free
    True
    """
    return NoiseCovariance(theta, inputs, targets, keep, activation)


def dense_sqrt(S: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix by eigendecomposition (negative rounding
    eigenvalues clipped to 0): the dense reference for the diffusion ``Σ^{1/2}``."""
    lam, V = torch.linalg.eigh(S)
    return (V * lam.clamp_min(0).sqrt()) @ V.T


def check_substeps(lr: float, substep: float) -> int:
    """Number of Euler–Maruyama sub-steps per dropout step; ``substep`` must divide ``lr``."""
    lr, h = check_positive("lr", lr), check_positive("substep", substep)
    m = round(lr / h)
    if m < 1 or abs(m * h - lr) > 1e-9 * lr:
        raise InputError(f"substep {substep!r} must divide the learning rate {lr!r} (lr / substep = {lr / h:.6g})")
    return m
