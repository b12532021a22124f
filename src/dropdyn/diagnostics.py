"""The phase paper's authors' curvature diagnostics for a particle system, matrix-free
(docs/theory.md §1, "Diagnostics"). In particle coordinates a step is
X ← X − τ n ∇L(X), so each curvature is that of n·L:

    sharpness                λ_max(n ∇²R(X)): the training loss of the full network on every
                             sample, no dropout; Lanczos on Hessian-vector products,
                             warm-started from the previous call's top eigenvector
    batch sharpness          E_B[gᵀ H g / ‖g‖²],  g = n ∇L_B(X),  H = n ∇²L_B(X): the loss
                             on a minibatch B, no dropout
    dropout batch sharpness  the same for L_{B,M}, the loss of the network thinned by a mask M
                             (f = (1/n) Σ_i (M_i/q) φ(x_i)) on B; the expectation over
                             batches and masks
    bypass_A, _B, _C         the terms of the sharpness-bypass expansion on the training loss
                             (``curvature.bypass_terms``, docs/theory.md §2): A the descent,
                             B the interaction (Gauss–Newton) term, C each neuron's own curvature

The two expectations are Monte-Carlo means over ``samples`` draws, each with its standard
error. Batches have the run's batch size (the full batch: one batch, no error); masks its
keep rate. The draws come from a stream of their own (seed + :data:`DIAGNOSTIC_SEED`), so
diagnosing a run does not change it.
"""

from __future__ import annotations

import math

import torch

from .curvature import bypass_terms, hvp
from .model import Design, predict

Tensor = torch.Tensor

DIAGNOSTIC_SEED = 15_485_863
NAMES = ("sharpness", "batch_sharpness", "batch_sharpness_se", "dropout_batch_sharpness",
         "dropout_batch_sharpness_se", "bypass_A", "bypass_B", "bypass_C")


def lanczos(matvec, start: Tensor, iterations: int) -> tuple[float, Tensor]:
    """The largest eigenvalue of the symmetric operator ``matvec`` and its Ritz vector, by
    ``iterations`` steps of Lanczos from ``start`` (fully reorthogonalised; it stops early
    on an invariant subspace). Exact once ``iterations`` reaches the dimension."""
    q = start / start.norm()
    Q, alphas, betas = [q], [], []
    for j in range(iterations):
        w = matvec(Q[j])
        alphas.append(torch.dot(w, Q[j]))
        basis = torch.stack(Q)
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)  # twice is enough (Kahan's rule)
        beta = w.norm()
        if j + 1 == iterations or beta <= 1e-12 * max(1.0, float(alphas[-1].abs())):
            break
        betas.append(beta)
        Q.append(w / beta)
    k = len(alphas)
    a = torch.stack(alphas)
    b = torch.stack(betas[: k - 1]) if k > 1 else a.new_zeros(0)
    vals, vecs = torch.linalg.eigh(torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1))
    return float(vals[-1]), torch.stack(Q[:k]).T @ vecs[:, -1]


class Diagnostics:
    """The diagnostics of one run, called at its diagnosed steps: ``design`` the full training
    set, ``batch_size`` B (None: the full batch), ``keep`` q, ``samples`` Monte-Carlo draws,
    ``iterations`` Lanczos steps. Keeps each replica's last top eigenvector."""

    def __init__(self, design: Design, *, batch_size: int | None, keep: float, samples: int, iterations: int,
                 seed: int):
        self.design, self.keep, self.samples, self.iterations = design, keep, samples, iterations
        self.m = design.y.shape[0]
        self.batch_size = batch_size or self.m
        self.generator = torch.Generator(device=design.Z.device).manual_seed((seed + DIAGNOSTIC_SEED) % 2**63)
        self.vectors: list[Tensor | None] = []

    def loss_of(self, rows: Tensor | None, weights: Tensor | None):
        """``X (n, p) ↦`` the mean loss on samples ``rows`` (all: None) of the network with
        forward weights ``weights`` ``(n,)`` (None: 1/n each), in the particles' layout."""
        design = self.design
        Z = design.Z[:, : design.d] if rows is None else design.Z[rows, : design.d]
        Y = design.y if rows is None else design.y[rows]

        def fn(X: Tensor) -> Tensor:
            F = None if weights is None else weights * X.shape[0]
            return design.loss.risk(predict(X, Z, design.act.name, forward=F, outputs=design.outputs), Y)

        return fn

    def measure(self, X: Tensor) -> dict[str, Tensor]:
        """Every diagnostic of the particles ``X (R, n, p)``: each ``(R,)``."""
        R, n = X.shape[:2]
        while len(self.vectors) < R:
            self.vectors.append(None)
        out = {name: [] for name in NAMES}
        for r in range(R):
            x = X[r].detach()
            full = self.loss_of(None, None)
            start = self.vectors[r]
            if start is None:
                start = torch.randn(x.numel(), generator=self.generator, dtype=x.dtype, device=x.device)
            lam, self.vectors[r] = lanczos(lambda v, x=x, full=full: n * hvp(full, x, v.view(x.shape)).reshape(-1),
                                           start, self.iterations)
            out["sharpness"].append(lam)
            design = self.design
            for name, value in bypass_terms(x, design.Z[:, : design.d], design.y, design.act.name,
                                            design.loss.name).items():
                out[f"bypass_{name}"].append(value)
            for name, masked in (("batch_sharpness", False), ("dropout_batch_sharpness", True)):
                mean, se = self._quotient(x, masked)
                out[name].append(mean)
                out[f"{name}_se"].append(se)
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}

    def _quotient(self, x: Tensor, masked: bool) -> tuple[float, float]:
        """Mean and standard error over ``samples`` draws of gᵀHg/‖g‖² for L_B (or L_{B,M})."""
        n, values = x.shape[0], []
        one = self.batch_size == self.m and not masked  # the full batch, no mask: one value, no error
        for _ in range(1 if one else self.samples):
            rows = None if self.batch_size == self.m else torch.rand(
                self.m, generator=self.generator, device=x.device).argsort()[: self.batch_size]
            weights = None
            if masked:
                mask = torch.rand(n, generator=self.generator, dtype=torch.float64, device=x.device) < self.keep
                weights = mask.to(x.dtype) / (self.keep * n)
            fn = self.loss_of(rows, weights)
            g = n * torch.func.grad(fn)(x)
            gg = float((g * g).sum())
            values.append(float((g * (n * hvp(fn, x, g))).sum()) / gg if gg > 0 else 0.0)
        v = torch.tensor(values, dtype=torch.float64)
        se = float(v.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0
        return float(v.mean()), se
