"""Mean-field two-layer network (docs/theory.md §1), closed forms only.

A neuron is a row ``x = (a, w[, b])`` of ``particles`` (shape ``(replicas, width, p)``,
``p = 1 + d`` or ``2 + d`` with a bias). With inputs ``z_j ∈ R^d`` (``inputs``: ``(m, d)``)
and the squared loss (the reference half below; the hot path takes every loss of
:mod:`dropdyn.losses`, its residual ∂ℓ/∂f in place of f − y, and K outputs, ``a ∈ R^K``,
``p = K + d [+ 1]``)

    φ(x, z) = a σ(w·z [+ b]),     f(μ) = (1/n) Σ_i F_i φ(x_i)          (predictor)
    r = f − y,                    R = ½‖r‖²,  ⟨u, v⟩ = (1/m) Σ_j u_j v_j
    ∇V(x) = Dφ(x)ᵀ r / m,         ∇P(x) = Dφ(x)ᵀ φ(x) / m              (P = ½‖φ‖²)

The first half of this module is the readable reference (one line per formula,
used by tests and notebooks). The second half, :class:`Design` and :func:`descent`,
is the fused hot path that the engine calls once per step; it is checked against
the reference and against autograd in ``tests/test_model.py``.

Hot-path levers (measured in ``benchmarks/bench_step.py``):

* every activation is evaluated through a cheap "value" ``T`` with ``S = A·T + B`` and
  ``σ'(u) = C·Q(T)``; tanh uses ``tanh(u) = 2·sigmoid(2u) − 1`` because ATen's
  sigmoid is several times faster than its tanh on CPU;
* the affine constants and the residual are applied on the small side
  (``(m, d)`` matrices), never on the ``(width, m)`` feature matrix;
* the feature dimension is zero-padded to a multiple of 16, which makes the skinny
  GEMMs several times faster on CPU BLAS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import check_choice
from .losses import LOSSES, Loss

Tensor = torch.Tensor


# --------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Activation:
    """An activation σ with its derivative, and its hot-path factorisation.

    ``fn``/``deriv`` are the reference σ and σ'. The hot path evaluates
    ``T = value(prescale · u)`` (possibly in place), then uses ``σ(u) = A·T + B`` and
    ``σ'(u) = C·slope(T, prescale·u)`` (``slope`` may overwrite its arguments and returns
    ``None`` when σ' ≡ 1).
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    deriv: Callable[[Tensor], Tensor]
    prescale: float
    value: Callable[[Tensor], Tensor]
    slope: Callable[[Tensor, Tensor], Tensor | None]
    A: float = 1.0
    B: float = 0.0
    C: float = 1.0


def _logistic_slope(T: Tensor, U: Tensor) -> Tensor:
    # T − T², in place on T.
    return T.addcmul_(T, T, value=-1.0)


def _erf_slope(T: Tensor, U: Tensor) -> Tensor:
    # exp(−u²), in place on U (T = erf(u) was computed out of place).
    return U.square_().neg_().exp_()


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation(
            "tanh", torch.tanh, lambda u: 1 - torch.tanh(u) ** 2,
            prescale=2.0, value=torch.sigmoid_, slope=_logistic_slope, A=2.0, B=-1.0, C=4.0,
        ),
        Activation(
            "sigmoid", torch.sigmoid, lambda u: torch.sigmoid(u) * (1 - torch.sigmoid(u)),
            prescale=1.0, value=torch.sigmoid_, slope=_logistic_slope,
        ),
        Activation(
            "relu", torch.relu, lambda u: (u > 0).to(u.dtype),
            prescale=1.0, value=torch.relu_, slope=lambda T, U: T.sign_(),
        ),
        Activation(
            "softplus", torch.nn.functional.softplus, torch.sigmoid,
            prescale=1.0, value=torch.nn.functional.softplus, slope=lambda T, U: U.sigmoid_(),
        ),
        Activation(
            "erf", torch.erf, lambda u: 2 / math.sqrt(math.pi) * torch.exp(-u * u),
            prescale=1.0, value=torch.erf, slope=_erf_slope, C=2 / math.sqrt(math.pi),
        ),
        Activation(
            "identity", lambda u: u, torch.ones_like,
            prescale=1.0, value=lambda u: u, slope=lambda T, U: None,
        ),
    )
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name (``ValueError`` naming the choices otherwise)."""
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]


# --------------------------------------------------------------------------- reference
def preactivations(particles: Tensor, inputs: Tensor, outputs: int = 1) -> Tensor:
    """``u_ij = w_i·z_j [+ b_i]``: ``(…, width, p), (m, d) → (…, width, m)``, where a row is
    ``(a, w[, b])`` with ``a`` of ``outputs`` entries K: ``w = x[K : K + d]``, ``b = x[K + d]``
    when ``p = K + d + 1``."""
    d, K = inputs.shape[-1], outputs
    u = particles[..., K : K + d] @ inputs.T
    return u + particles[..., K + d, None] if particles.shape[-1] == K + d + 1 else u


def features(particles: Tensor, inputs: Tensor, activation: str = "tanh", outputs: int = 1) -> Tensor:
    """``φ(x_i, z_j) = a_i σ(u_ij)``: ``(…, width, m)``, or ``(…, width, m, K)`` with K =
    ``outputs`` > 1."""
    act = get_activation(activation)
    s = act.fn(preactivations(particles, inputs, outputs))
    return particles[..., 0, None] * s if outputs == 1 else s[..., None] * particles[..., None, :outputs]


def predict(
    particles: Tensor, inputs: Tensor, activation: str = "tanh", forward: Tensor | None = None, outputs: int = 1
) -> Tensor:
    """``f = (1/n) Σ_i F_i φ(x_i)``: ``(…, width, p) → (…, m)`` (``(…, m, K)`` with K =
    ``outputs`` > 1, the cross-entropy loss's logits); ``forward`` F: ``(…, width)``."""
    phi = features(particles, inputs, activation, outputs)
    if forward is not None:
        phi = phi * forward.reshape(*forward.shape, *(1,) * (phi.dim() - forward.dim()))
    return phi.mean(dim=-2 if outputs == 1 else -3)


def risk(particles: Tensor, inputs: Tensor, targets: Tensor, activation: str = "tanh") -> Tensor:
    """``R(μ) = ½‖f(μ) − y‖² = (1/2m) Σ_j (f_j − y_j)²``: ``(…,)``."""
    r = predict(particles, inputs, activation) - targets
    return 0.5 * (r * r).mean(dim=-1)


def grad_potential(
    particles: Tensor, inputs: Tensor, residual: Tensor, activation: str = "tanh"
) -> Tensor:
    """``∇V(x_i) = Dφ(x_i)ᵀ r / m`` for a residual ``r`` of shape ``(…, m)`` or, per neuron,
    ``(…, width, m)``. Returns ``(…, width, p)``."""
    act = get_activation(activation)
    d, m = inputs.shape[-1], inputs.shape[0]
    a = particles[..., 0]
    u = preactivations(particles, inputs)
    res = residual if residual.dim() == u.dim() else residual[..., None, :]
    ga = (act.fn(u) * res).sum(-1) / m
    e = act.deriv(u) * res * a[..., None] / m  # (…, width, m)
    parts = [ga[..., None], e @ inputs]
    if particles.shape[-1] == d + 2:
        parts.append(e.sum(-1, keepdim=True))
    return torch.cat(parts, dim=-1)


def grad_penalty(particles: Tensor, inputs: Tensor, activation: str = "tanh") -> Tensor:
    """``∇P(x_i) = Dφ(x_i)ᵀ φ(x_i) / m`` with ``P = ½‖φ‖²``: ``(…, width, p)``."""
    return grad_potential(particles, inputs, features(particles, inputs, activation), activation)


# --------------------------------------------------------------------------- hot path
def _pad16(k: int) -> int:
    return -(-k // 16) * 16


@dataclass(frozen=True)
class Design:
    """Inputs prepared once per run for :func:`descent`.

    ``Z``: ``(m, P)`` = ``[z_j, 1 (if bias), 0 …]`` zero-padded to ``P`` (a multiple of 16);
    ``ZsT = (prescale · Z)ᵀ`` stored contiguous ``(P, m)``; ``y``: the targets as ``loss``
    holds them, ``(m,)`` or, with ``outputs`` K > 1, ``(m, K)``. A minibatch design
    (:meth:`rows`) has a leading replica axis on each: ``(R, B, P)``, ``(R, P, B)``, ``(R, B[, K])``.
    """

    Z: Tensor
    ZsT: Tensor
    y: Tensor
    act: Activation
    d: int
    bias: bool
    loss: Loss = LOSSES["squared"]
    outputs: int = 1

    @staticmethod
    def build(inputs: Tensor, targets: Tensor, activation: str, bias: bool, loss: Loss = LOSSES["squared"],
              outputs: int = 1) -> Design:
        act = get_activation(activation)
        m, d = inputs.shape
        Z = inputs.new_zeros(m, _pad16(d + bias))
        Z[:, :d] = inputs
        if bias:
            Z[:, d] = 1.0
        return Design(Z, (Z * act.prescale).T.contiguous(), targets, act, d, bias, loss, outputs)

    def samples(self, start: int, stop: int) -> Design:
        """The design of samples ``start:stop`` (views, no copies)."""
        return Design(self.Z[start:stop], self.ZsT[:, start:stop], self.y[start:stop], self.act, self.d, self.bias,
                      self.loss, self.outputs)

    def rows(self, idx: Tensor) -> Design:
        """The minibatch design of samples ``idx (R, B)``: replica r sees samples ``idx[r]``."""
        Z = self.Z[idx]
        return Design(Z, (Z * self.act.prescale).transpose(1, 2).contiguous(), self.y[idx], self.act, self.d,
                      self.bias, self.loss, self.outputs)

    def pack(self, particles: Tensor) -> tuple[Tensor, Tensor]:
        """``(R, n, p) → a (R, n)`` (``(R, n, K)`` with K outputs), ``W (R, n, P)`` (contiguous,
        zero-padded; new tensors, never views of ``particles``, so a run may update them in place)."""
        K = self.outputs
        a = (particles[..., 0] if K == 1 else particles[..., :K]).clone(memory_format=torch.contiguous_format)
        W = particles.new_zeros(*particles.shape[:-1], self.Z.shape[-1])
        W[..., : particles.shape[-1] - K] = particles[..., K:]
        return a, W

    def unpack(self, a: Tensor, W: Tensor) -> Tensor:
        """Inverse of :meth:`pack`."""
        return torch.cat([a[..., None] if self.outputs == 1 else a, W[..., : self.d + self.bias]], dim=-1)


def _rowdot(T: Tensor, r: Tensor) -> Tensor:
    """``Σ_j T_rij r_rj``: ``(R, K, m), (R, m) → (R, K)``. One ``mv`` per replica: on CPU
    several times faster than a batched matrix-vector ``bmm`` or a multiply-and-sum."""
    return torch.stack([Ti @ ri for Ti, ri in zip(T, r, strict=True)])


def forward(design: Design, a: Tensor, W: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Predictor with forward weights ``weights = F_i / n`` (``(R, K)``): returns
    ``f (R, m)`` (``(R, m, K)`` with K outputs), the activation values ``T (R, K, m)`` and
    the prescaled pre-activations ``U`` (which may share storage with ``T``; see :class:`Activation`)."""
    act = design.act
    U = W @ design.ZsT
    T = act.value(U)
    if design.outputs > 1:
        v = a * weights[..., None]  # (R, K, outputs)
        f = act.A * (T.transpose(1, 2) @ v)
        return (f + act.B * v.sum(1, keepdim=True) if act.B else f), T, U
    v = a * weights
    f = act.A * (v[:, None, :] @ T).squeeze(1)
    if act.B:
        f = f + act.B * v.sum(-1, keepdim=True)
    return f, T, U


def descent(
    design: Design, a: Tensor, W: Tensor, weights: Tensor, penalty: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """One fused forward/backward pass.

    For neurons ``(a, W)`` of shape ``(R, K)``, ``(R, K, P)`` and forward weights
    ``weights = F_i / n`` (``(R, K)``), returns the descent directions

        g_i = Dφ(x_i)ᵀ (r + c φ(x_i)) / m,   r = ∂ℓ/∂f at f = Σ_i (F_i/n) φ(x_i),  c = ``penalty``

    as ``ga (R, K)``, ``gW (R, K, P)``, and the output ``f (R, m)`` (r = f − y for the
    squared loss; c is the squared loss's penalty). With ``design.outputs`` > 1, ``a`` and
    ``ga`` are ``(R, K, outputs)`` and ``f`` is ``(R, m, outputs)``.
    """
    act, Z, m = design.act, design.Z, design.Z.shape[-2]
    f, T, U = forward(design, a, W, weights)
    r = design.loss.residual(f, design.y)
    if design.outputs > 1:
        return (*_descent_outputs(act, Z, a, T, U, r), f)
    ga = act.A * _rowdot(T, r)
    if act.B:
        ga = ga + act.B * r.sum(-1, keepdim=True)
    S = T.mul(act.A).add_(act.B) if penalty else None  # σ(u), kept only for the penalty
    rZ = r[..., None] * Z  # (R, m, P)
    Q = act.slope(T, U)
    if Q is None:  # σ' ≡ 1
        gW = rZ.sum(1, keepdim=True).expand(W.shape)
    else:
        gW = act.C * (Q @ rZ)
    gW = a[..., None] * gW
    if penalty:  # σσ' and σ² in place: a (width × m) temporary is a page-faulting allocation on CPU
        SdS = S @ Z if Q is None else act.C * (Q.mul_(S) @ Z)
        ga = ga + penalty * a * S.square_().sum(-1)
        gW = gW + penalty * (a * a)[..., None] * SdS
    return ga / m, gW / m, f


def _descent_outputs(act: Activation, Z: Tensor, a: Tensor, T: Tensor, U: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`descent`'s directions for K outputs: ``ga_i = Σ_j σ(u_ij) r_j / m`` ``(R, n, K)``
    and ``gW_i = Σ_j σ'(u_ij) (a_i·r_j) z_j / m`` from the residuals ``r (R, m, K)``."""
    m = Z.shape[-2]
    ga = act.A * (T @ r)
    if act.B:
        ga = ga + act.B * r.sum(1, keepdim=True)
    E = a @ r.transpose(1, 2)  # (R, n, m): a_i·r_j
    Q = act.slope(T, U)
    gW = E @ Z if Q is None else act.C * (Q.mul_(E) @ Z)
    return ga / m, gW / m


def descend(
    design: Design, a: Tensor, W: Tensor, weights: Tensor, scale: Tensor | float, delta: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`descent`'s step applied (no penalty): ``a − s·ga``, ``W − s·gW`` with per-neuron
    step sizes ``scale`` s (``(R, K)``, or one number), and the output f. ``delta``: return
    the changes ``−s·ga``, ``−s·gW`` instead, for a caller that adds them in place.

    ``gW_i = (C/m) a_i Σ_j slope_ij r_j z_j`` is one GEMM, ``Q (K × m) @ rZ (m × P)``, and its
    per-neuron factor ``c_i = −s_i a_i C/m`` goes onto the smaller side (:func:`_onto`), so the
    new W comes out of the GEMM and at most one more pass: no pass over W's size scales or
    subtracts. With K outputs the factor folds into ``E = (c ⊙ a) rᵀ``, which is formed anyway.
    """
    act, Z, m = design.act, design.Z, design.Z.shape[-2]
    f, T, U = forward(design, a, W, weights)
    r = design.loss.residual(f, design.y)
    step = scale * (-1.0 / m)
    base = None if delta else W
    if design.outputs > 1:  # r (R, m, K): ga_i = Σ_j σ(u_ij) r_j / m, gW_i = Σ_j σ'(u_ij)(a_i·r_j) z_j / m
        ga = act.A * (T @ r)
        if act.B:
            ga = ga + act.B * r.sum(1, keepdim=True)
        E = (a * (_column(step) * act.C)) @ r.transpose(1, 2)  # (R, K, m): c_i a_i·r_j
        Q = act.slope(T, U)
        da, dW = _column(step) * ga, _onto(base, E if Q is None else Q.mul_(E), Z)
    else:
        ga = act.A * _rowdot(T, r)
        if act.B:
            ga = ga + act.B * r.sum(-1, keepdim=True)
        rZ = r[..., None] * Z  # (R, m, P)
        coef = a * (step * act.C)  # (R, K)
        Q = act.slope(T, U)
        if Q is None:  # σ' ≡ 1: gW_i ∝ a_i Σ_j r_j z_j, one row for all
            Q, rZ = coef[..., None], rZ.sum(1, keepdim=True)
            coef = None
        da, dW = step * ga, _onto(base, Q, rZ, coef)
    return (da, dW, f) if delta else (a + da, dW, f)


def _column(x: Tensor | float) -> Tensor | float:
    """Per-neuron factors ``(R, K)`` as a column ``(R, K, 1)`` (a number stays a number)."""
    return x[..., None] if isinstance(x, Tensor) else x


def _onto(W: Tensor | None, Q: Tensor, M: Tensor, coef: Tensor | None = None) -> Tensor:
    """``W + c ⊙ (Q @ M)`` (``c ⊙ (Q @ M)`` for W None) for ``W (R, K, P)``, ``Q (R, K, m)``,
    ``M ((R,) m, P)`` and row factors ``coef`` c ``(R, K)`` (None: already in Q), as one GEMM:
    with ``m < 2P`` c scales Q (in place) and the GEMM accumulates onto a copy of W
    (``baddbmm``); otherwise c scales the GEMM's (K × P) output, the smaller side."""
    if coef is None or Q.shape[-1] < 2 * M.shape[-1]:
        if coef is not None:
            Q = Q.mul_(coef[..., None])
        M = M.expand(Q.shape[0], *M.shape[-2:])
        return torch.bmm(Q, M) if W is None else torch.baddbmm(W, Q, M)
    G = Q @ M
    return G.mul_(coef[..., None]) if W is None else torch.addcmul(W, coef[..., None], G)
