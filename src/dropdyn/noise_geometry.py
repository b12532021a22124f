"""Noise geometry of dropout for any ``torch.nn`` model: the Hessian–variance alignment
and the noise variance along the Hessian's top directions, matrix-free.

Alignment (docs/theory.md §3).

For a ``torch.nn`` model with dropout layers, parameters θ (all of them, flattened),
a loss and a batch:

    g(δ) = ∇_θ ℓ(θ; δ)                  dropout gradient under masks δ
    Σ    = Cov_δ g(δ)                   noise covariance
    H    = E_δ ∇²_θ ℓ(θ; δ) = ∇² L_S    Hessian of the expected (modified) loss
    α    = Tr(HΣ) / (‖H‖_F ‖Σ‖_F)

Unbiased estimators from independent mask draws (each a fresh draw of every dropout
layer's mask, per example as in ``nn.Dropout``). Sample i draws K = ``gradients`` masks,
whose gradients have the unbiased sample covariance Ŝ_i = Σ_k c_k c_kᵀ/(K−1),
c_k = g_k − ḡ; two further masks δ, δ' give Hessians H_i = H(δ), H_i' = H(δ'); and a
Rademacher probe z_i:

    Tr(HΣ)  ≈ mean_i T_i,       T_i = ½ Tr((H_i + H_i') Ŝ_i) = Σ_k c_kᵀ(H_i + H_i')c_k / (2(K−1))
    ‖H‖_F²  ≈ mean_i A_i,       A_i = (H_i z_i) · (H_i' z_i)
    ‖Σ‖_F²  ≈ mean over pairs i < j ≤ i + PARTNERS of B_ij,   B_ij = Tr(Ŝ_i Ŝ_j) = ‖C_i C_jᵀ‖_F²/(K−1)²

(the last an incomplete U-statistic: each sample is paired with its PARTNERS
predecessors, so its cost is linear in the number of samples). H(δ)V is a batch of
Hessian-vector products from one double-backward graph. T_i and B_ij share the
gradients of sample i, so their errors are correlated and largely cancel in the ratio.
The interval is the delta method on the linearisation of log α,

    ψ_i = (T_i − t)/t − (A_i − a)/(2a) − (m_i − b)/b,    m_i = mean_j B_ij over i's partners,

(the U-statistic's first-order Hoeffding term is 2(m_i − b)), half-width
z·α·std(ψ)/√samples. ``exact=True`` enumerates every mask of a small model and batch
(at most 2¹⁶) and forms H and Σ densely. Masks are imposed by forward hooks on the
dropout modules, each applied as the layer itself applies its mask (:data:`LAYERS`), so
any model with these layers works unchanged:

    nn.Dropout, dropdyn.nets.Dropout     a mask per element: x·m/q (dropdyn's: x·m too)
    nn.Dropout1d, 2d, 3d                 a mask per channel (all of a channel's positions)
    nn.AlphaDropout                      a mask per element; a dropped unit is set to SELU's
                                         saturation −λα and the output affinely rescaled to
                                         keep its mean and variance: a·(x·m + λα(m − 1 + p))
    nn.FeatureAlphaDropout               the same with a mask per channel

Randomness of the model's own outside these layers (``F.dropout`` in a ``forward``, say)
would make α irreproducible: a model whose training-mode output differs between two passes
with the same masks is refused. Batch normalisation in training mode normalises with the
batch's statistics, so ℓ(θ; δ) is the loss of the whole batch, whose examples interact
through them, and H and Σ are of that loss; the running statistics are left as they were.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ._checks import InputError, check_finite, check_int, check_seed
from .curvature import _top_eigs
from .nets import Dropout as NetsDropout
from .threads import using


def check_parameters(model: nn.Module) -> None:
    """The model has trainable parameters and all of them are finite."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters")
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        raise InputError(f"model parameters {', '.join(bad[:3])} contain non-finite values (a diverged model?)")


def check_batch(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """A non-empty batch whose inputs and targets match, on which the model in training mode
    (as α runs it: batch norm with the whole batch's statistics) gives a scalar loss, and the
    same loss twice with the same masks (no randomness outside its dropout layers)."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise InputError("inputs and targets must be torch tensors")
    if inputs.dim() < 1 or len(inputs) < 1 or targets.dim() < 1 or len(targets) != len(inputs):
        raise InputError(f"inputs and targets must hold the same number (>= 1) of examples, got shapes "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _masks(model, lambda i, shape: torch.ones(
                shape, dtype=torch.bool, device=inputs.device)):
            losses = [loss_fn(model(inputs), targets) for _ in range(2)]
    except (RuntimeError, ValueError, IndexError) as e:
        raise InputError(f"the model and loss cannot take inputs of shape {tuple(inputs.shape)} and targets of "
                         f"shape {tuple(targets.shape)}: {' '.join(str(e).split())}") from None
    if not isinstance(losses[0], torch.Tensor) or losses[0].numel() != 1:
        raise InputError("loss_fn must return a scalar (use a mean- or sum-reduced loss)")
    if not torch.equal(losses[0], losses[1]):
        raise InputError("the model draws randomness of its own outside its dropout layers (functional "
                         "F.dropout in forward?): two passes with the same masks differ, so α would not be "
                         "reproducible; use dropout modules (nn.Dropout, …)")


def check_model(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """What every noise measurement needs: finite inputs (and finite real targets), finite
    trainable parameters, and a batch on which the loss is a scalar."""
    if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs) or not bool(
            torch.isfinite(inputs).all()):
        raise InputError("inputs must be finite floating-point values (NaN or inf found)")
    if isinstance(targets, torch.Tensor) and torch.is_floating_point(targets) and not bool(
            torch.isfinite(targets).all()):
        raise InputError("targets contain non-finite values (NaN or inf)")
    check_parameters(model)
    check_batch(model, loss_fn, inputs, targets)


ALPHA = 1.7580993408473766  # −λα of SELU: where AlphaDropout sets a dropped unit (ATen's constant)


@dataclass(frozen=True)
class Noise:
    """How a dropout layer applies its keep-mask m ({0, 1}): on units of ``spatial`` trailing
    dimensions sharing one mask (0: every element; a channel's positions for Dropout1d/2d/3d,
    ``None``: all after the channel axis), as ``x·m/q`` (``inverted``), ``x·m``, or AlphaDropout's
    ``a·(x·m + λα(m − 1 + p))``."""

    spatial: int | None = 0
    kind: str = "inverted"  # inverted, plain or alpha

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        k = len(shape) - 2 if self.spatial is None else self.spatial
        return tuple(shape[:len(shape) - k]) + (1,) * k

    def apply(self, x: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
        if self.kind == "inverted":
            return x * mask / keep
        if self.kind == "plain":
            return x * mask
        p = 1.0 - keep
        a = 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * keep)
        return x * (mask * a) + (mask - 1) * (ALPHA * a) + ALPHA * a * p


# torch's dropout layers, each with the noise it applies (dropdyn.nets.Dropout: by its convention)
LAYERS = {nn.Dropout: Noise(0), nn.Dropout1d: Noise(1), nn.Dropout2d: Noise(2), nn.Dropout3d: Noise(3),
          nn.AlphaDropout: Noise(0, "alpha"), nn.FeatureAlphaDropout: Noise(None, "alpha")}


class DropoutLayer(NamedTuple):
    """A dropout layer of a model as α replays it: the module, its keep rate, its noise."""

    module: nn.Module
    keep: float
    noise: Noise


def _dropout_layers(model: nn.Module) -> list[DropoutLayer]:
    """Every dropout layer of ``model`` that drops something."""
    out = []
    for m in model.modules():
        if type(m) in LAYERS and m.p > 0:
            out.append(DropoutLayer(m, 1.0 - m.p, LAYERS[type(m)]))
        elif isinstance(m, NetsDropout) and m.keep < 1:
            out.append(DropoutLayer(m, m.keep, Noise(0, "inverted" if m.inverted else "plain")))
    if not out:
        raise InputError("the model has no dropout layer (or only keep = 1): dropout noise is zero and "
                         f"the alignment α is undefined (dropout layers: {', '.join(t.__name__ for t in LAYERS)}, "
                         "dropdyn.nets.Dropout)")
    return out


@contextmanager
def _masks(model: nn.Module, draw):
    """Within the block, dropout layer i applies ``mask = draw(i, shape)`` (a {0, 1} tensor of
    its units' shape, :meth:`Noise.mask_shape`) as the layer itself does (:meth:`Noise.apply`).
    The model runs in training mode, its dropout modules in eval mode (so that they draw
    nothing: the hooks give their output), and its buffers (batch-norm running statistics)
    are restored on exit."""
    layers = _dropout_layers(model)
    handles = []
    for i, (m, keep, noise) in enumerate(layers):
        def hook(mod, inp, out, i=i, keep=keep, noise=noise):
            x = inp[0]
            return noise.apply(x, draw(i, noise.mask_shape(tuple(x.shape))).to(x.dtype), keep)
        handles.append(m.register_forward_hook(hook))
    was = model.training
    # forward passes update running statistics in place: let them update copies, and put the
    # originals back afterwards by reassignment (an in-place restore would corrupt the graphs
    # that saved the copies)
    buffers = [(m, name, b) for m in model.modules() for name, b in m.named_buffers(recurse=False)]
    for m, name, b in buffers:
        setattr(m, name, b.clone())
    model.train()
    for layer in layers:  # a layer in eval mode draws no mask of its own (from torch's global generator)
        layer.module.eval()
    try:
        yield layers
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        for m, name, b in buffers:
            setattr(m, name, b)


def parameter_subset(model: nn.Module, parameters) -> torch.Tensor | None:
    """The flat indices (into the concatenation of the model's trainable parameters) of
    ``parameters`` — names or tensors of ``model`` — or None for all of them."""
    if parameters is None:
        return None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(parameters, (str, torch.Tensor)):
        parameters = [parameters]
    chosen = set()
    for q in parameters:
        hits = [i for i, (n, p) in enumerate(named) if (q == n if isinstance(q, str) else q is p)]
        if not hits:
            what = repr(q) if isinstance(q, str) else f"a tensor of shape {tuple(q.shape)}"
            raise InputError(f"parameters: {what} is not a trainable parameter of the model; its names are "
                             f"{', '.join(n for n, _ in named)}")
        chosen.update(hits)
    offsets = [0]
    for _, p in named:
        offsets.append(offsets[-1] + p.numel())
    return torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in sorted(chosen)])


class _Problem:
    """Gradients and Hessian-vector products of ℓ(θ; δ) for masks drawn from a generator,
    restricted to the coordinates ``subset`` (None: all)."""

    def __init__(self, model, loss_fn, inputs, targets, generator, subset: torch.Tensor | None = None):
        self.model, self.loss_fn, self.inputs, self.targets = model, loss_fn, inputs, targets
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.gen = generator
        self.layers = _dropout_layers(model)
        self.subset = None if subset is None else subset.to(inputs.device)
        self.size = sum(p.numel() for p in self.params)

    def _draw(self, i, shape):
        keep = self.layers[i].keep
        return torch.rand(shape, generator=self.gen, device=self.inputs.device) < keep

    def _loss(self, draw):
        with _masks(self.model, draw):
            return self.loss_fn(self.model(self.inputs), self.targets)

    def grad(self, draw=None) -> torch.Tensor:
        loss = self._loss(draw or self._draw)
        g = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self.params)]).detach()
        return g if self.subset is None else g[self.subset]

    def hvps(self, V: torch.Tensor, draw=None) -> torch.Tensor:
        """``H(δ) V`` for the rows of V (k × D), one mask draw δ for all rows: one
        double-backward graph, the k products batched (``is_grads_batched``)."""
        loss = self._loss(draw or self._draw)
        gs = torch.autograd.grad(loss, self.params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in gs])
        if self.subset is not None:  # vectors live on the subset: zero elsewhere in, the block out
            full = V.new_zeros(len(V), self.size)
            full[:, self.subset] = V
            V = full
        hv = torch.autograd.grad(flat, self.params, grad_outputs=V, is_grads_batched=True)
        out = torch.cat([h.reshape(len(V), -1) for h in hv], 1).detach()
        return out if self.subset is None else out[:, self.subset]


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
    gradients: int = 0
    exact: bool = False
    baseline: float = float("nan")


PARTNERS = 32  # each sample's Ŝ_i is paired with this many predecessors' in the ‖Σ‖_F² U-statistic


def alignment(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *, samples: int = 100,
              gradients: int = 4, seed: int = 0, confidence: float = 0.95, exact: bool = False,
              parameters=None, on_sample: Callable[[int], None] | None = None, threads: int | None = None) -> Alignment:
    """Estimate α(θ) = Tr(HΣ)/(‖H‖_F‖Σ‖_F) (module docstring) over all parameters, or over
    the subset ``parameters`` — names from ``model.named_parameters()`` or the parameter
    tensors themselves — where H and Σ are the blocks of that subset (the SME paper
    measures "a subset of parameters"; pooling blocks of different scale lowers the cosine).
    Each of the ``samples`` costs ``gradients`` gradients and two Hessian graphs applied to
    ``gradients`` + 1 vectors. ``on_sample(i)`` is called after the i-th sample (a progress
    readout; it is given no device value, so it makes the host wait for nothing). ``threads``:
    torch's intra-op threads for the call (default: :mod:`dropdyn.threads` chooses).

    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> res = alignment(net, nn.functional.cross_entropy, x, y, samples=20, seed=1)
    >>> res.parameters, res.ci[0] <= res.alpha <= res.ci[1]
    (51, True)
    """
    samples = check_int("samples", samples, 2)
    K = check_int("gradients", gradients, 2)
    seed = check_seed(seed)
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    check_model(model, loss_fn, inputs, targets)
    subset = parameter_subset(model, parameters)
    with using(threads):
        if exact:
            return _exact(model, loss_fn, inputs, targets, subset)
        return _estimate(model, loss_fn, inputs, targets, subset, samples, K, seed, confidence, on_sample)


def _estimate(model, loss_fn, inputs, targets, subset, samples: int, K: int, seed: int, confidence: float,
              on_sample) -> Alignment:
    """The Monte-Carlo estimate of :func:`alignment` (its arguments checked)."""
    g = torch.Generator(device=inputs.device).manual_seed(seed)
    prob = _Problem(model, loss_fn, inputs, targets, g, subset)
    # Per-sample statistics stay on the device until the end: a read per sample (or per pair)
    # would stall a GPU's queue between the samples' gradient and HVP passes.
    T, A, trH, trS = (torch.zeros(samples, dtype=torch.float64, device=inputs.device) for _ in range(4))
    first, second, B = [], [], []  # the pairs (i, j) and their B_ij
    recent: deque[tuple[int, torch.Tensor]] = deque(maxlen=PARTNERS)  # (j, C_j) of the last PARTNERS samples
    for i in range(samples):
        grads = torch.stack([prob.grad() for _ in range(K)])
        C = grads - grads.mean(0)  # (K, D)
        z = (torch.randint(0, 2, grads.shape[1:], generator=g, device=C.device) * 2 - 1).to(C.dtype)
        V = torch.cat([C, z[None]])
        H1, H2 = prob.hvps(V).double(), prob.hvps(V).double()
        T[i] = ((H1[:K] + H2[:K]) * C.double()).sum() / (2 * (K - 1))
        A[i] = H1[K] @ H2[K]
        trH[i] = (z.double() @ (H1[K] + H2[K])) / 2
        trS[i] = (C.double() ** 2).sum() / (K - 1)
        for j, Cj in recent:
            first.append(i)
            second.append(j)
            B.append(((C @ Cj.T).double() ** 2).sum() / (K - 1) ** 2)
        recent.append((i, C))
        if on_sample is not None:
            on_sample(i + 1)
    T, A, trH, trS, Bij = (x.cpu() for x in (T, A, trH, trS, torch.stack(B)))
    first, second = torch.tensor(first), torch.tensor(second)
    t, a, b = float(T.mean()), float(A.mean()), float(Bij.mean())
    m = ((torch.bincount(first, Bij, samples) + torch.bincount(second, Bij, samples))  # m_i: mean B_ij over partners
         / (torch.bincount(first, minlength=samples) + torch.bincount(second, minlength=samples)))
    root_n = math.sqrt(samples)
    alpha = t / math.sqrt(a * b) if a > 0 and b > 0 else math.nan  # a zero estimate leaves α undefined
    if t != 0 and a > 0 and b > 0:
        psi = (T - t) / t - (A - a) / (2 * a) - (m - b) / b
        rel = float(psi.std()) / root_n
    else:
        rel = math.inf
    from scipy.stats import norm

    half = float(norm.ppf(0.5 + confidence / 2)) * abs(alpha) * rel
    D = len(z)
    baseline = float(trH.mean()) * float(trS.mean()) / (D * math.sqrt(a * b)) if a > 0 and b > 0 else math.nan
    return Alignment(alpha, (alpha - half, alpha + half), (t, float(T.std()) / root_n), (a, float(A.std()) / root_n),
                     (b, 2 * float(m.std()) / root_n), samples, D, gradients=K, baseline=baseline)


MAX_EXACT_UNITS = 16  # exact=True enumerates 2^units masks: at most 2¹⁶


def _exact(model, loss_fn, inputs, targets, subset: torch.Tensor | None = None) -> Alignment:
    """α from the dense H and Σ of :func:`exact_matrices` (their ``subset`` block)."""
    H, S, n_masks = exact_matrices(model, loss_fn, inputs, targets)
    if subset is not None:
        H, S = H[subset][:, subset], S[subset][:, subset]
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
    if total > MAX_EXACT_UNITS:
        raise InputError(f"exact alignment enumerates 2^{total} masks (dropout units × batch), more than "
                         f"{2**MAX_EXACT_UNITS}; use the estimator (exact=False) or a smaller model or batch")
    prob = _Problem(model, loss_fn, inputs, targets, None)
    D = sum(p.numel() for p in prob.params)
    grads, hess, weights = [], torch.zeros(D, D, dtype=torch.float64), []
    eye = torch.eye(D, dtype=inputs.dtype)
    for bits in itertools.product([False, True], repeat=total):
        chunks = dict(zip((i for i, _ in shapes), torch.split(torch.tensor(bits), sizes), strict=True))
        w = 1.0
        for i, c in chunks.items():
            keep, k = layers[i].keep, int(c.sum())
            w *= keep**k * (1 - keep) ** (len(c) - k)

        def draw(i, shape, chunks=chunks):
            return chunks[i].reshape(shape)

        grads.append(prob.grad(draw).double())
        hess += w * prob.hvps(eye, draw).double()
        weights.append(w)
    W = torch.tensor(weights, dtype=torch.float64)
    G = torch.stack(grads)
    mean = (W[:, None] * G).sum(0)
    C = G - mean
    S = (W[:, None, None] * C[:, :, None] * C[:, None, :]).sum(0)
    return 0.5 * (hess + hess.T), S, len(W)


def _check_pair(H: torch.Tensor, S: torch.Tensor) -> None:
    """Two finite square matrices of one size."""
    for name, M in (("H", H), ("S", S)):
        if not isinstance(M, torch.Tensor) or M.dim() != 2 or M.shape[0] != M.shape[1] or M.numel() == 0:
            raise InputError(f"{name} must be a non-empty square matrix, got "
                             f"{tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__}")
        check_finite(name, M)
    if H.shape != S.shape:
        raise InputError(f"H and S must have the same size, got {tuple(H.shape)} and {tuple(S.shape)}")


def matrix_alignment(H: torch.Tensor, S: torch.Tensor) -> float:
    """α = Tr(HS)/(‖H‖_F‖S‖_F) for dense symmetric matrices (NaN if either is zero, where α
    is undefined)."""
    _check_pair(H, S)
    return float((H * S).sum() / (H.norm() * S.norm()))


def random_baseline(H: torch.Tensor, S: torch.Tensor, samples: int = 100, seed: int = 0) -> float:
    """The paper's baseline: mean α between two matrices with the spectra of H and S and
    independent random (Haar) eigenvectors. The SME paper builds its random matrices from
    normalised Gaussian vectors instead; both constructions are rotation-invariant, so both
    have the same expected Tr(HΣ) = Tr H·Tr Σ/D (:attr:`Alignment.baseline`)."""
    _check_pair(H, S)
    samples = check_int("samples", samples, 1)
    g = torch.Generator().manual_seed(check_seed(seed))
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

    k = check_int("k", k, 1)
    hessian_masks = check_int("hessian_masks", hessian_masks, 1)
    samples = check_int("samples", samples, 2)
    seed = check_seed(seed)
    check_model(model, loss_fn, inputs, targets)
    g = torch.Generator(device=inputs.device)
    prob = _Problem(model, loss_fn, inputs, targets, g)
    N = sum(p.numel() for p in prob.params)
    if k >= N:
        raise InputError(f"k must be less than the number of parameters ({N}) for Lanczos, got {k}")
    dtype = prob.params[0].dtype

    def matvec(v):
        g.manual_seed(seed)  # the same masks at every call
        t = torch.as_tensor(np.asarray(v, dtype=np.float64).ravel(), dtype=dtype, device=inputs.device)
        return (sum(prob.hvps(t[None])[0] for _ in range(hessian_masks)) / hessian_masks).double().cpu().numpy()

    vals, vecs = _top_eigs(matvec, N, k, 1e-6, seed, vectors=True)
    order = np.argsort(vals)[::-1]
    vals, V = vals[order], torch.as_tensor(vecs[:, order], dtype=dtype, device=inputs.device)
    g.manual_seed(seed + 1)
    proj = torch.stack([(prob.grad() - prob.grad()) @ V for _ in range(samples)]).double()  # (samples, k)
    var = (proj**2 / 2).mean(0)
    se = (proj**2 / 2).std(0) / math.sqrt(samples)
    return {"curvature": vals, "variance": var.cpu().numpy(), "variance_se": se.cpu().numpy(),
            "directions": V.double().cpu().numpy()}
