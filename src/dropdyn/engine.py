"""The particle engine: one step rule for every variant, and its driver of the shared run loop.

Every variant of docs/theory.md §1 is the same step

    X_i ← X_i − τ B_i Dφ(X_i)ᵀ ( ℓ'((1/n) Σ_j F_j φ(X_j), y) + c φ(X_i) ) / m

with forward multipliers F, backward multipliers B (each either ``mask/q`` or 1) and a
penalty coefficient c (docs/theory.md §1, table of variants):

    variant        F         B        c
    dropout        mask/q    mask/q   0
    ram            1         mask/q   0
    forward-only   mask/q    1        0
    independent    mask'/q   mask/q   0      (mask' drawn independently of mask)
    penalty        1         1        (1 − q)/(n q)
    gd             1         1        0

Dropout's forward and backward both vanish on dropped neurons, so its step can be
computed on the kept neurons only (cost ∝ q·width), their rows of W changed in place
(:func:`kept_rows_step`). Compacting them costs a gather and their count on the host (on a
GPU, a stall): a step too small for the saved work to pay for that runs on all neurons
instead (:data:`COMPACT_MIN_WORK`).

ℓ' = ∂ℓ/∂f is the loss's residual (:mod:`dropdyn.losses`; f − y for the squared loss, the
only one with a penalty c or a critical rule). With ``batch_size`` B, each step sums over
B samples drawn afresh, without replacement, per replica (:class:`BatchStream`; m = B);
runs with one seed share their batches as they share their masks.

The limits of docs/theory.md §2 are rules of the same step (``dropdyn.limits``); the
critical phase IV replaces the shared forward pass by one random forward pass per
moving neuron (``Rule.critical``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ._checks import (
    InputError,
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_keep,
    check_memory,
    check_positive,
    check_seed,
)
from .diagnostics import Diagnostics
from .loop import DivergenceWatch, finite, run_loop, within
from .losses import encode, get_loss
from .masks import MaskStream
from .model import Design, descend, descent, features, forward, grad_potential
from .threads import using

Tensor = torch.Tensor


@dataclass(frozen=True)
class Rule:
    """One step's multipliers: F = mask/q if ``forward_masked`` else 1, likewise B;
    ``penalty`` is c; ``independent``: F's mask is a draw of its own, independent of B's (the
    phase paper's authors' "PN + RaM"). With a kernel ``beta`` (the critical rule of phase IV), each moving
    neuron i instead sees its own random forward pass β(φ(X_i) + Σ_{l≤N_i} φ(Y_l)),
    N_i ~ Poisson(1/β), Y_l drawn uniformly from the current particles (docs/theory.md §2)."""

    forward_masked: bool
    backward_masked: bool
    penalty: float = 0.0
    beta: float | None = None
    independent: bool = False

    @property
    def critical(self) -> bool:
        return self.beta is not None

    @property
    def uses_masks(self) -> bool:
        return self.forward_masked or self.backward_masked


VARIANTS = ("dropout", "ram", "forward-only", "independent", "penalty", "gd")
FORWARD_SEED = 104_729  # the independent forward masks' stream: seed + this (mod 2^63)
BATCH_SEED = 1_299_709  # the minibatches' stream: seed + this (mod 2^63)

# Dropout compacts its kept neurons only when that saves at least this many multiply-adds a
# step, R·n·m·P·(1 − q) (replicas × neurons × samples × W's padded columns × the dropped
# fraction: what its two GEMMs skip); below it the fixed cost of finding and gathering the
# kept rows (and on a GPU the host read of their count) outweighs the saving. CPU: measured,
# 2 cores, float32, with the kept rows updated in place (:func:`kept_rows_step`): even at
# 10⁷ (width 1000, d = 784, batch 64, q = 0.8), 1.35× slower at 8·10⁵ (width 1000, d = 10,
# m = 100, q = 0.5), faster from 1.3·10⁷ (0.83× the uncompacted time, 16 replicas of that)
# and 0.4× at 4·10⁷ (width 5000, m = 1000). GPU: from the H100's timings of the older
# count, the uncompacted step faster at 4·10⁷ and the compacted one at 8·10⁹.
COMPACT_MIN_WORK = {"cpu": 2**23, "cuda": 2**27}
# A record's forward pass runs over blocks of samples whose (R, width, block) matrices have
# about this many entries (and at least RECORD_MIN_BLOCK samples): a large test set then
# needs little more memory than a step, and on CPU the blocks are reused from the heap
# instead of page-faulting a fresh mapping each record (with the probe's shared pass, records
# at width 5000 took about half the time).
# GPUs have a caching allocator, and each block costs launches: their blocks are larger.
RECORD_BLOCK_ENTRIES, RECORD_MIN_BLOCK = {"cpu": 2**20, "cuda": 2**28}, 64


def rule_for(variant: str, width: int, keep: float) -> Rule:
    """The :class:`Rule` of a named variant at this width and keep rate."""
    check_choice("variant", variant, VARIANTS)
    if variant == "dropout":
        return Rule(True, True)
    if variant == "ram":
        return Rule(False, True)
    if variant == "forward-only":
        return Rule(True, False)
    if variant == "independent":
        return Rule(True, True, independent=True)
    if variant == "penalty":
        return Rule(False, False, (1.0 - keep) / (width * keep))
    return Rule(False, False)


def _gather(a: Tensor, W: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``idx (R, K)`` of ``a (R, n[, outputs])`` and ``W (R, n, P)``, and their flat row indices."""
    R, n = a.shape[:2]
    rows = (idx + n * torch.arange(R, device=a.device)[:, None]).reshape(-1)
    P, out = W.shape[-1], a.shape[2:]
    a_s = a.reshape(R * n, *out).index_select(0, rows).view(*idx.shape, *out)
    W_s = W.reshape(-1, P).index_select(0, rows).view(*idx.shape, P)
    return a_s, W_s, rows


def _scatter(a: Tensor, W: Tensor, rows: Tensor, a_s: Tensor, W_s: Tensor) -> tuple[Tensor, Tensor]:
    """New ``a``, ``W`` with the rows ``rows`` replaced (inverse of :func:`_gather`)."""
    P, out = W.shape[-1], a.shape[2:]
    a = a.reshape(-1, *out).index_copy(0, rows, a_s.reshape(-1, *out)).view(a.shape)
    W = W.reshape(-1, P).index_copy(0, rows, W_s.reshape(-1, P)).view(W.shape)
    return a, W


def _each(mult: Tensor, g: Tensor) -> Tensor:
    """Per-neuron multipliers ``mult (R, K)`` times ``g (R, K)`` or ``(R, K, outputs)``."""
    return mult * g if g.dim() == mult.dim() else mult[..., None] * g


def _critical_step(design: Design, a: Tensor, W: Tensor, lr: float, beta: float, mask: Tensor,
                   keep: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Phase IV kernel: each neuron with ``mask`` moves by
    −(lr/q) Dφ(X_i)ᵀ(β(φ(X_i) + Σ_{l≤N_i} φ(Y_l)) − y)/m. Per-neuron forward passes do not
    fit the fused shared-residual pass, so this uses the reference closed forms."""
    R, n = a.shape
    idx, valid = _kept_first(mask)
    K = idx.shape[1]
    if K == 0:  # no clock rang: the output is the targets' (a residual of 0)
        return a, W, design.y.expand(R, -1)
    X = design.unpack(a, W)
    inputs = design.Z[:, : design.d]
    phi = features(X, inputs, design.act.name)  # (R, n, m)
    counts = torch.poisson(torch.full((R, K), 1.0 / beta, dtype=a.dtype, device=a.device), generator)
    counts = (counts * valid).long()
    owner = torch.repeat_interleave(torch.arange(R * K, device=a.device), counts.reshape(-1))
    picks = torch.randint(n, (owner.numel(),), generator=generator, device=a.device)
    picks = picks + n * (owner // K)  # Y_l from the owner's own replica
    others = torch.zeros(R * K, phi.shape[-1], dtype=a.dtype, device=a.device)
    others.index_add_(0, owner, phi.reshape(R * n, -1).index_select(0, picks))
    a_s, W_s, rows = _gather(a, W, idx)
    X_s = design.unpack(a_s, W_s)
    m = phi.shape[-1]
    self_phi = phi.reshape(R * n, m).index_select(0, rows).view(R, K, m)
    residual = beta * (self_phi + others.view(R, K, m)) - design.y
    ga, gW = design.pack(grad_potential(X_s, inputs, residual, design.act.name))
    mult = valid.to(a.dtype) * (lr / keep)
    a, W = _scatter(a, W, rows, a_s - mult * ga, W_s - mult[..., None] * gW)
    r = (residual * valid[..., None]).sum(1) / valid.sum(1).clamp(min=1)[:, None]
    return a, W, r + design.y


def step(
    design: Design, a: Tensor, W: Tensor, lr: float, rule: Rule, mask: Tensor | None, keep: float,
    generator: torch.Generator | None = None, direction=descent, compact: bool = True,
    forward_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply one step to neurons ``a (R, n)`` (``(R, n, outputs)``), ``W (R, n, P)`` with
    keep-mask ``mask`` (``(R, n)`` bool, or None for mask-free rules) on the samples of
    ``design``. Returns new ``a``, ``W`` and the output ``f (R, m[, outputs])`` of the step's
    (possibly thinned) forward pass (for a critical rule: the targets plus the mean residual
    of the moving neurons). ``generator`` feeds the critical
    rule's random forward passes; ``direction`` is :func:`dropdyn.model.descent` or the
    fused :func:`dropdyn.fused.fused_descent`. ``compact``: dropout computes on its kept
    neurons only (reading their count on the host); otherwise on all, dropped ones with
    multiplier 0 — the same step up to rounding, with no host synchronisation.
    ``forward_mask``: an ``independent`` rule's forward mask (``mask`` is then its backward one)."""
    R, n = a.shape[:2]
    if rule.critical:
        return _critical_step(design, a, W, lr, rule.beta, mask, keep, generator)
    mult = None if mask is None else mask.to(a.dtype) * (1.0 / keep)
    if compact and rule.forward_masked and rule.backward_masked and not rule.independent and not bool(mask.all()):
        # Only kept neurons enter the forward pass or move: compact them, per replica
        # padded to the largest count with zero weight (padding rows are dropped
        # neurons, so every row index is unique).
        if direction is descent and not rule.penalty:
            return kept_rows_step(design, a, W, lr, mask, keep)[:3]
        idx, valid = _kept_first(mask)
        mult = valid.to(a.dtype) * (1.0 / keep)
        a_s, W_s, rows = _gather(a, W, idx)
        a_s, W_s, f = _descend(design, a_s, W_s, mult * (1.0 / n), lr, mult, rule.penalty, direction)
        a, W = _scatter(a, W, rows, a_s, W_s)
        return a, W, f
    if rule.independent:
        fw = forward_mask.to(a.dtype) * (1.0 / keep)
    else:
        fw = mult if rule.forward_masked else a.new_ones(R, n)
    return _descend(design, a, W, fw * (1.0 / n), lr, mult if rule.backward_masked else None, rule.penalty,
                    direction)


def kept_rows_step(design: Design, a: Tensor, W: Tensor, lr: float, mask: Tensor, keep: float,
                   in_place: bool = False) -> tuple[Tensor, Tensor, Tensor, Callable[[], None]]:
    """The dropout step on the kept rows of ``a (R, n[, outputs])`` and ``W (R, n, P)``: their
    forward pass and changes (:func:`dropdyn.model.descend` with ``delta``) on the gathered
    rows, added onto those rows of a copy of a and W, or of a and W themselves with
    ``in_place`` (no new W is written: an out-of-place step writes all of W, this one only its
    kept rows; the same bits either way). Returns a, W, the output f, and a function that
    puts the rows' old values back (an in-place step found to diverge is undone)."""
    R, n = a.shape[:2]
    idx, valid = _kept_first(mask)
    mult = valid.to(a.dtype) * (1.0 / keep)
    a_s, W_s, rows = _gather(a, W, idx)
    da, dW, f = descend(design, a_s, W_s, mult * (1.0 / n), lr * mult, delta=True)
    out, P = a.shape[2:], W.shape[-1]
    flat_a, flat_W = a.view(R * n, *out), W.view(R * n, P)
    if not in_place:
        flat_a, flat_W = flat_a.clone(), flat_W.clone()
    flat_a.index_add_(0, rows, da.reshape(-1, *out))
    flat_W.index_add_(0, rows, dW.reshape(-1, P))

    def restore() -> None:
        flat_a.index_copy_(0, rows, a_s.reshape(-1, *out))
        flat_W.index_copy_(0, rows, W_s.reshape(-1, P))

    return flat_a.view(a.shape), flat_W.view(W.shape), f, restore


def _descend(design: Design, a: Tensor, W: Tensor, weights: Tensor, lr: float, back: Tensor | None, penalty: float,
             direction) -> tuple[Tensor, Tensor, Tensor]:
    """``a − τ B·ga``, ``W − τ B·gW`` and the output f, with backward multipliers ``back`` B
    (None: 1): by :func:`dropdyn.model.descend` for the reference pass without a penalty,
    else from the directions of ``direction`` (:func:`descent` or the fused pass)."""
    if direction is descent and not penalty:
        return descend(design, a, W, weights, lr if back is None else lr * back)
    ga, gW, f = direction(design, a, W, weights, penalty)
    if back is not None:
        ga, gW = _each(back, ga), back[..., None] * gW
    return a - lr * ga, W - lr * gW, f


def _kept_first(mask: Tensor) -> tuple[Tensor, Tensor]:
    """For a keep-mask ``(R, n)``: indices ``(R, K)`` (K = most kept in a replica) of each
    replica's kept neurons in order, padded with its first dropped ones, and the
    ``(R, K)`` bool marking the kept entries."""
    R, n = mask.shape
    counts = mask.sum(-1, keepdim=True)
    K = int(counts.max())
    pos = torch.where(mask, mask.cumsum(-1) - 1, counts + (~mask).cumsum(-1) - 1)
    perm = torch.empty_like(pos).scatter_(1, pos, torch.arange(n, device=mask.device).expand(R, n))
    return perm[:, :K], torch.arange(K, device=mask.device) < counts


@dataclass
class SimulationResult:
    """What :func:`simulate` computed. Arrays are on the CPU; leading ``R`` (replicas)
    axes are absent when the particles were given as ``(width, p)``.

    ``steps``/``times`` (``k`` and ``t = k·τ``) index the records: ``risk`` (train risk
    — the mean loss — of the full network on every training sample), ``test_risk``,
    ``accuracy`` and ``test_accuracy`` (for the logistic and cross-entropy losses),
    ``outputs`` (f on the probe inputs, ``(records, [R,] m_probe[, K])``). ``snapshots``
    are particles at ``snapshot_steps``; ``diagnostics`` (:data:`dropdyn.diagnostics.NAMES`
    → ``(diagnosed, [R])``) the curvature diagnostics at ``diagnostic_steps``.
    ``diverged_at_step`` is the first step whose forward risk was non-finite or above
    the threshold, or whose update was non-finite; ``particles`` is then the last
    state before it.
    """

    particles: Tensor
    steps: Tensor
    times: Tensor
    risk: Tensor
    test_risk: Tensor | None = None
    outputs: Tensor | None = None
    snapshots: Tensor | None = None
    snapshot_steps: Tensor | None = None
    accuracy: Tensor | None = None
    test_accuracy: Tensor | None = None
    diagnostics: dict[str, Tensor] | None = None
    diagnostic_steps: Tensor | None = None
    diverged_at_step: int | None = None
    info: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """All tensors as NumPy arrays (for ``np.savez``)."""
        return {k: v.detach().cpu().numpy() for k, v in vars(self).items() if isinstance(v, Tensor)}

    def on_grid(self, name: str, grid) -> np.ndarray:
        """Record ``name`` (``risk``, ``test_risk``, ``outputs`` or ``snapshots``) at the
        steps ``grid`` as a float64 array ``(len(grid), …)``, NaN at steps it has no record
        of (after a divergence). Runs that diverged at different steps line up this way."""
        values = getattr(self, name)
        steps = self.snapshot_steps if name == "snapshots" else self.steps
        if values is None or steps is None:
            raise InputError(f"this run recorded no {name}")
        where = {int(k): i for i, k in enumerate(steps.tolist())}
        grid = [int(k) for k in np.asarray(grid).tolist()]
        out = np.full((len(grid), *values.shape[1:]), np.nan)
        for j, k in enumerate(grid):
            if k in where:
                out[j] = values[where[k]].double().numpy()
        return out


def record_steps(steps: int, every: int) -> np.ndarray:
    """The steps :func:`simulate` records at when no divergence stops it: 0, every, 2·every, …, steps."""
    return np.unique(np.r_[np.arange(0, steps + 1, every), steps])


def _as_tensor(name: str, x, dtype, device) -> Tensor:
    """``x`` as a real ``dtype`` tensor on ``device``, detached from any autograd graph; NaN,
    inf and complex values are refused (a cast would silently drop the imaginary part)."""
    if x.is_complex() if isinstance(x, Tensor) else np.iscomplexobj(x):
        raise InputError(f"{name} must be real, got complex values")
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise InputError(f"{name} must be an array of numbers, got {type(x).__name__}") from None
    x = x.detach().to(device=device, dtype=dtype)
    check_finite(name, x)
    return x


def _check_masks(masks, steps: int, R: int, n: int, batched: bool, device) -> Tensor:
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
        got = masks.dtype if isinstance(masks, Tensor) else type(masks).__name__
        raise InputError(f"masks must be a bool tensor of kept neurons, got {got}")
    shapes = [(steps, n)] + ([(steps, R, n)] if batched else [])
    if tuple(masks.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise InputError(f"masks must have shape {want}, got {tuple(masks.shape)}")
    masks = masks.to(device)
    return masks[:, None, :].expand(steps, R, n) if masks.dim() == 2 else masks


@dataclass
class ParticleProblem:
    """The validated inputs of a run: particles ``X (R, n, p)`` (``batched``: given with a
    replica axis), the training design and the optional test and probe designs."""

    X: Tensor
    batched: bool
    design: Design
    test: Design | None
    probe: Design | None
    probe_is_test: bool = False  # the probe inputs are the test inputs: one forward pass records both

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.X.shape[:2])


def prepare(particles, inputs, targets, *, activation: str = "tanh", loss: str = "squared", classes: int | None = None,
            test_inputs=None, test_targets=None, probe_inputs=None, device=None, dtype=None,
            materialised: bool = True, batch_size: int | None = None) -> ParticleProblem:
    """Check and convert the arrays of a run: shapes ``particles (width, p)`` or ``(R, width,
    p)`` with ``p = K + d`` or ``K + d + 1`` (a bias) for K outputs (1, or the classes of the
    cross-entropy loss: ``classes``, default the largest label + 1), ``inputs (m, d)``,
    ``targets (m,)`` as the ``loss`` takes them (:func:`dropdyn.losses.encode`), m ≥ 1;
    real, finite values; arrays that fit in memory — with the (width × m) matrices of the
    reference step (m = ``batch_size`` when given) if ``materialised``, else (the fused step)
    the particles' few copies. Computation uses ``dtype``/``device`` (default: the particles';
    float64 if they are not floating point)."""
    if not isinstance(particles, Tensor):
        particles = _as_tensor("particles", particles, torch.float64, "cpu")
    dtype = dtype or (particles.dtype if particles.is_floating_point() else torch.float64)
    device = check_device(device) if device is not None else particles.device
    lossf = get_loss(loss)
    Z = _as_tensor("inputs", inputs, dtype, device)
    y = _as_tensor("targets", targets, dtype, device)
    if Z.dim() != 2 or Z.shape[0] < 1:
        raise InputError(f"inputs must have shape (n_samples, d) with at least one sample, got {tuple(Z.shape)}")
    m, d = Z.shape
    if y.shape != (m,):
        raise InputError(f"targets must have shape ({m},) to match inputs, got {tuple(y.shape)}")
    y, K = encode(lossf, "targets", y, classes)
    if batch_size is not None and batch_size > m:
        raise InputError(f"batch_size {batch_size} exceeds the {m} training samples")
    shape = tuple(particles.shape)  # checked, and sized, before the particles are read or copied
    if len(shape) not in (2, 3) or 0 in shape:
        raise InputError(f"particles must have shape (width, p) or (replicas, width, p), width and replicas >= 1, "
                         f"got {shape}")
    if shape[-1] not in (d + K, d + K + 1):
        a = "a" if K == 1 else f"a ∈ R^{K}"
        raise InputError(f"particles have p={shape[-1]} coordinates but inputs have d={d}: p must be "
                         f"{d + K} ({a}, w) or {d + K + 1} ({a}, w, b)")
    R, n = (1, *shape[:1]) if len(shape) == 2 else shape[:2]
    per_neuron = 4 * ((batch_size or m) + shape[-1]) if materialised else 8 * 16 * math.ceil((d + 2) / 16)
    check_memory(f"a step at width {n} with {R} replica(s) and {batch_size or m} samples",
                 R * n * per_neuron * torch.empty(0, dtype=dtype).element_size(), device)
    X = _as_tensor("particles", particles, dtype, device)
    X3 = X if X.dim() == 3 else X[None]
    bias = X.shape[-1] == d + K + 1
    if (test_inputs is None) != (test_targets is None):
        raise InputError("test_inputs and test_targets must be given together")

    def side(name, xs, ys):
        if xs is None:
            return None
        xs = _as_tensor(name, xs, dtype, device)
        if xs.dim() != 2 or xs.shape[1] != d:
            raise InputError(f"{name} must have shape (n, {d}), got {tuple(xs.shape)}")
        if ys is None:  # a probe: its outputs alone are recorded
            return Design.build(xs, xs.new_zeros(xs.shape[0], *((K,) if K > 1 else ())), activation, bias, lossf, K)
        ys = _as_tensor(name.replace("inputs", "targets"), ys, dtype, device)
        if ys.shape != (xs.shape[0],):
            raise InputError(f"test_targets must have shape ({xs.shape[0]},), got {tuple(ys.shape)}")
        return Design.build(xs, encode(lossf, "test_targets", ys, K if K > 1 else None)[0], activation, bias,
                            lossf, K)

    test = side("test_inputs", test_inputs, test_targets)
    probe = side("probe_inputs", probe_inputs, None)
    return ParticleProblem(X3, X.dim() == 3, Design.build(Z, y, activation, bias, lossf, K), test, probe,
                   probe is not None and probe_inputs is test_inputs)


def mask_source(rule: Rule, keep: float, steps: int, prob: ParticleProblem, *, masks=None, seed: int = 0,
                generator: torch.Generator | None = None):
    """``k ↦`` the keep-mask ``(R, n)`` of step k (None for mask-free rules): the given
    ``masks`` — a tensor, or a :class:`~dropdyn.masks.MaskStream` of shape ``(R, n)`` drawn
    from as the run goes (two runs given streams made alike see the same masks, none stored) —
    or the stream of ``generator``, or the stream seeded with ``seed`` (one seed, one stream:
    runs are coupled); and the generators it draws from. ``k`` is an int, or a 0-dim long
    tensor on the device (a step captured in a CUDA graph counts there)."""
    if not rule.uses_masks:
        return (lambda k: None), ()
    R, n = prob.shape
    if isinstance(masks, MaskStream):
        if masks.shape != (R, n) or masks.device != prob.X.device:
            raise InputError(f"a mask stream must have shape ({R}, {n}) on {prob.X.device}, got {masks.shape} on "
                             f"{masks.device}")
        return (lambda k: masks.next()), (masks.generator,)
    if masks is not None:
        given = _check_masks(masks, steps, R, n, prob.batched, prob.X.device)
        return (lambda k: given[k - 1] if isinstance(k, int) else given.index_select(0, k.view(1) - 1)[0]), ()
    stream = MaskStream(keep, (R, n), seed, prob.X.device, generator=generator)
    return (lambda k: stream.next()), (stream.generator,)


def forward_source(rule: Rule, keep: float, prob: ParticleProblem, seed: int):
    """``k ↦`` an ``independent`` rule's forward mask ``(R, n)`` of step k (None for other
    rules): a stream of its own, seeded with seed + :data:`FORWARD_SEED`, whatever the backward
    masks' source; and the generators it draws from."""
    if not rule.independent:
        return (lambda k: None), ()
    stream = MaskStream(keep, prob.shape, (seed + FORWARD_SEED) % 2**63, prob.X.device)
    return (lambda k: stream.next()), (stream.generator,)


class BatchStream:
    """The minibatches of a run: each :meth:`next` draws ``(R, B)`` sample indices, each
    replica's B distinct (drawn without replacement from ``m``), independent across steps
    and replicas, from a generator seeded with ``seed``."""

    def __init__(self, m: int, shape: tuple[int, int], seed: int, device):
        self.m, self.shape = m, shape
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def next(self) -> Tensor:
        R, B = self.shape
        u = torch.rand(R, self.m, generator=self.generator, device=self.generator.device)
        return u.argsort(-1)[:, :B]


def batch_source(prob: ParticleProblem, steps: int, *, batch_size: int | None, batches=None, seed: int = 0):
    """``k ↦`` the design of step k: the full training set, or its minibatch — ``batches[k − 1]``
    (indices ``(steps, B)`` shared by the replicas, or ``(steps, R, B)``) or the k-th draw of
    the :class:`BatchStream` seeded with seed + :data:`BATCH_SEED` — and the generators it draws from."""
    design, m = prob.design, prob.design.Z.shape[0]
    if batches is None and batch_size is None:
        return (lambda k: design), ()
    R = prob.shape[0]
    if batches is not None:
        if not isinstance(batches, Tensor) or batches.dtype not in (torch.int32, torch.int64):
            got = batches.dtype if isinstance(batches, Tensor) else type(batches).__name__
            raise InputError(f"batches must be an integer tensor of sample indices, got {got}")
        if batches.dim() not in (2, 3) or batches.shape[0] != steps or (batches.dim() == 3 and batches.shape[1] != R) \
                or batches.shape[-1] < 1:
            raise InputError(f"batches must have shape ({steps}, B) or ({steps}, {R}, B), got {tuple(batches.shape)}")
        if batch_size is not None and batch_size != batches.shape[-1]:
            raise InputError(f"batch_size {batch_size} differs from the given batches' {batches.shape[-1]}")
        if bool(((batches < 0) | (batches >= m)).any()):
            raise InputError(f"batches hold a sample index outside 0 … {m - 1}")
        given = batches.to(prob.X.device).long()
        given = given[:, None].expand(steps, R, given.shape[-1]) if given.dim() == 2 else given
        return (lambda k: design.rows(given[k - 1])), ()
    stream = BatchStream(m, (R, batch_size), (seed + BATCH_SEED) % 2**63, prob.X.device)
    return (lambda k: design.rows(stream.next())), (stream.generator,)


def reference_output(design: Design, a: Tensor, W: Tensor, weights: Tensor) -> Tensor:
    """``f = Σ_i weights_i φ(x_i)`` ``(R, m[, K])`` by the reference forward pass, over blocks
    of samples (:data:`RECORD_BLOCK_ENTRIES`; the fused pass is
    :func:`dropdyn.fused.fused_output`)."""
    m, entries = design.y.shape[0], RECORD_BLOCK_ENTRIES.get(a.device.type, RECORD_BLOCK_ENTRIES["cpu"])
    block = max(RECORD_MIN_BLOCK, entries // W[..., 0].numel())
    return torch.cat([forward(design.samples(j, j + block), a, W, weights)[0] for j in range(0, m, block)], dim=1)


def mean_weights(a: Tensor) -> Tensor:
    """The full network's forward weights 1/n, ``(R, n)``."""
    return a.new_full(a.shape[:2], 1.0 / a.shape[1])


def full_risk(design: Design, a: Tensor, W: Tensor, output=reference_output) -> Tensor:
    """R(μ) = mean_j ℓ(f(z_j), y_j) of the full network, per replica ``(R,)``."""
    return design.loss.risk(output(design, a, W, mean_weights(a)), design.y)


class Recorder:
    """The records of a run: risks (and accuracies, test risks, probe outputs) at record
    steps, particle snapshots every ``snapshot_every`` steps. ``output``: the forward pass
    (reference or fused) that computes them."""

    def __init__(self, prob: ParticleProblem, snapshot_every: int | None, output=reference_output,
                 diagnostics: Diagnostics | None = None, diagnostics_every: int | None = None):
        self.prob, self.snapshot_every, self.output = prob, snapshot_every, output
        self.diagnostics, self.diagnostics_every = diagnostics, diagnostics_every
        self.diagnosed: list[dict[str, Tensor]] = []
        self.diagnostic_steps: list[int] = []
        self.steps: list[int] = []
        self.series: dict[str, list[Tensor]] = {k: [] for k in ("risk", "accuracy", "test_risk", "test_accuracy",
                                                                "outputs")}
        self.snaps: list[Tensor] = []
        self.snap_steps: list[int] = []

    def record(self, k: int, a: Tensor, W: Tensor, risk: Tensor | None = None) -> None:
        p, loss, mean = self.prob, self.prob.design.loss, mean_weights(a)
        self.steps.append(k)
        f = self.output(p.design, a, W, mean) if risk is None or loss.classes else None
        self.series["risk"].append(loss.risk(f, p.design.y) if risk is None else risk)
        if loss.classes:
            self.series["accuracy"].append(loss.accuracy(f, p.design.y))
        if p.probe is not None:
            probe = self.output(p.probe, a, W, mean)
            self.series["outputs"].append(probe)
        if p.test is not None:  # one forward pass less when the probe is the test set
            f = probe if p.probe_is_test else self.output(p.test, a, W, mean)
            self.series["test_risk"].append(loss.risk(f, p.test.y))
            if loss.classes:
                self.series["test_accuracy"].append(loss.accuracy(f, p.test.y))

    def snapshot_due(self, k: int, last: int) -> bool:
        """Whether step k's state is kept: a snapshot or a diagnosis is due."""
        return any(every is not None and (k % every == 0 or k == last)
                   for every in (self.snapshot_every, self.diagnostics_every))

    def snapshot(self, k: int, last: int, a: Tensor, W: Tensor) -> None:
        if self.snapshot_every is not None and (k % self.snapshot_every == 0 or k == last):
            self.snaps.append(self.prob.design.unpack(a, W))
            self.snap_steps.append(k)
        if self.diagnostics_every is not None and (k % self.diagnostics_every == 0 or k == last):
            self.diagnosed.append(self.diagnostics.measure(self.prob.design.unpack(a, W)))
            self.diagnostic_steps.append(k)

    def stack(self, xs: list[Tensor]) -> Tensor | None:
        if not xs:
            return None
        t = torch.stack(xs).cpu()
        return t if self.prob.batched else t[:, 0]

    def result(self, a: Tensor, W: Tensor, lr: float, diverged: int | None, info: dict) -> SimulationResult:
        X = self.prob.design.unpack(a, W)
        steps = torch.tensor(self.steps)
        return SimulationResult(
            particles=(X if self.prob.batched else X[0]).cpu(), steps=steps, times=steps.to(torch.float64) * lr,
            risk=self.stack(self.series["risk"]), test_risk=self.stack(self.series["test_risk"]),
            outputs=self.stack(self.series["outputs"]), accuracy=self.stack(self.series["accuracy"]),
            test_accuracy=self.stack(self.series["test_accuracy"]),
            diagnostics={k: self.stack([d[k] for d in self.diagnosed]) for k in self.diagnosed[0]}
            if self.diagnosed else None,
            diagnostic_steps=torch.tensor(self.diagnostic_steps) if self.diagnostic_steps else None,
            snapshots=self.stack(self.snaps), snapshot_steps=torch.tensor(self.snap_steps) if self.snap_steps else None,
            diverged_at_step=diverged, info=info)


@dataclass(frozen=True)
class Records:
    """What :func:`simulate` records, and on which sets: the risks every ``every`` steps (and
    at the last step) on the training set, on the test set (``test_inputs (m', d)``,
    ``test_targets (m',)``) and the outputs on ``probe_inputs (m_probe, d)``; particle
    snapshots every ``snapshot_every`` steps (None: none); the curvature diagnostics of
    :mod:`dropdyn.diagnostics` every ``diagnostics_every`` steps (None: none), their
    expectations over ``diagnostic_samples`` draws, the sharpness from
    ``lanczos_iterations`` Hessian-vector products."""

    every: int = 1
    test_inputs: Any = None
    test_targets: Any = None
    probe_inputs: Any = None
    snapshot_every: int | None = None
    diagnostics_every: int | None = None
    diagnostic_samples: int = 20
    lanczos_iterations: int = 15


@dataclass(frozen=True)
class Execution:
    """How :func:`simulate` runs: ``device`` and ``dtype`` of the computation (default: the
    particles'); ``backend`` ``"torch"`` (the reference step) or ``"fused"`` (Triton kernels
    that never form the (width × m) matrices, :mod:`dropdyn.fused`; CUDA only);
    ``check_every``: the host reads the divergence test every this many steps and at every
    record (default: 1 on the CPU, 16 on a GPU, where each read stalls the stream; in
    between the device keeps the last good state and the first failing step, so the result is
    the same for any value); ``graph``: replay the steps that are not recorded as one
    captured CUDA graph (:mod:`dropdyn.graph`; CUDA only, not the critical rule; dropout then
    does not compact its kept neurons); ``divergence_threshold``: the run stops at the first
    step whose risk (thinned, or full at a record) exceeds ``divergence_threshold · (1 + R_0)``
    or is non-finite, or whose update is non-finite; ``progress``: a bar of its own (True),
    none (False), a tqdm bar of a larger run to advance, or — the default, None — a bar that
    appears once the call has run 2 s."""

    device: Any = None
    dtype: Any = None
    backend: str = "torch"
    check_every: int | None = None
    graph: bool = False
    divergence_threshold: float = 1e6
    progress: Any = None


def grouped(cls, group, **flat):
    """``group`` (an instance of dataclass ``cls``), or one built from the flat keywords
    ``flat`` of :func:`simulate`; refuses a group given together with a flat keyword that
    differs from its default (one setting, one place)."""
    if group is None:
        return cls(**flat)
    if not isinstance(group, cls):
        raise InputError(f"{cls.__name__.lower()} must be a dropdyn.engine.{cls.__name__}, got {type(group).__name__}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    both = [k for k, v in flat.items() if v is not defaults[k] and not (isinstance(v, (bool, int, float, str))
                                                                       and v == defaults[k])]
    if both:
        raise InputError(f"give {', '.join(both)} in {cls.__name__.lower()}= or as keywords, not both")
    return group


class ParticleState(NamedTuple):
    """A run's state between steps: neurons ``a (R, n)``, ``W (R, n, P)`` and, after a
    recorded step, the full risk ``(R,)`` (None otherwise)."""

    a: Tensor
    W: Tensor
    risk: Tensor | None


def check_combination(rule: Rule, name: str, design: Design, execution: Execution, batched: bool) -> None:
    """Refuse in one line what a rule, loss and execution cannot do together: the penalty and
    the critical rule are the squared loss's (the critical rule on the full batch); the fused
    kernels and CUDA graphs take the squared loss on the full batch."""
    loss = design.loss.name
    if loss != "squared" and (rule.penalty or rule.critical):
        what = "the penalty variant is the expected dropout step" if rule.penalty else \
            "the critical rule of phase IV is the limit"
        raise InputError(f"{what} of the squared loss; {name} has no meaning with the {loss} loss")
    if rule.critical and batched:
        raise InputError("the critical rule of phase IV is a full-batch limit; give no batch_size or batches")
    for flag, on in (("backend 'fused'", execution.backend == "fused"), ("graph=True", execution.graph)):
        if on and (loss != "squared" or batched):
            raise InputError(f"{flag} runs the squared loss on the full batch; use backend='torch', graph=False "
                             f"for the {loss} loss" + (" with minibatches" if batched else ""))


class ParticleDriver:
    """:func:`simulate`'s run as a :class:`dropdyn.loop.Driver`: the checked problem, its rule,
    mask and batch sources and recorder."""

    def __init__(self, variant, prob: ParticleProblem, *, lr: float, keep: float, steps: int, seed: int, masks,
                 generator, records: Records, execution: Execution, batch_size: int | None = None, batches=None):
        self.prob, self.lr, self.keep, self.steps = prob, lr, keep, steps
        R, n = prob.shape
        self.fused, self.graph = execution.backend == "fused", execution.graph
        self.rule = variant if isinstance(variant, Rule) else rule_for(variant, n, keep)
        self.name = variant if isinstance(variant, str) else repr(variant)
        self.batched = batch_size is not None or batches is not None
        check_combination(self.rule, self.name, prob.design, execution, self.batched)
        self.direction, self.output = descent, reference_output
        if self.fused:
            from .fused import check_fused, fused_descent, fused_output

            check_fused(prob.X.device, prob.design.d + prob.design.bias)
            self.direction, self.output = fused_descent, fused_output
        if self.graph:
            from .graph import check_graph

            check_graph(prob.X.device)
            if self.rule.critical:
                raise InputError("graph=True cannot replay the critical rule of phase IV (its number of forward "
                                 "passes per step is random); use graph=False")
        self.next_mask, generators = mask_source(self.rule, keep, steps, prob, masks=masks, seed=seed,
                                                 generator=generator)
        self.next_forward, forward_generators = forward_source(self.rule, keep, prob, seed)
        self.next_design, _ = batch_source(prob, steps, batch_size=batch_size, batches=batches, seed=seed)
        generators = (*generators, *forward_generators)
        # the critical rule's own stream: given masks and drawn masks see the same kernel draws
        self.kernel = torch.Generator(device=prob.X.device).manual_seed((seed + 7919) % 2**63) if self.rule.critical \
            else None
        samples = batch_size or (batches.shape[-1] if batches is not None else prob.design.Z.shape[0])
        self.batch_size = samples if self.batched else None
        diagnostics = None if records.diagnostics_every is None else Diagnostics(
            prob.design, batch_size=self.batch_size, keep=keep, samples=records.diagnostic_samples,
            iterations=records.lanczos_iterations, seed=seed)
        self.rec = Recorder(prob, records.snapshot_every, self.output, diagnostics, records.diagnostics_every)
        a, W = prob.design.pack(prob.X)
        self.initial = ParticleState(a, W, full_risk(prob.design, a, W, self.output))  # R_0: record 0, the limit
        self.limit = execution.divergence_threshold * (1.0 + float(self.initial.risk.max()))
        self.watch = DivergenceWatch(execution.check_every, prob.X.device, on_device=self.graph)
        # dropout only; a graphed step may not read the kept count on the host
        saved = R * n * samples * prob.design.Z.shape[-1] * (1.0 - keep)
        self.compact = not self.graph and saved >= COMPACT_MIN_WORK.get(prob.X.device.type, 0)
        # dropout's kept rows updated in place (kept_rows_step), undone on the host if the step
        # diverged: where the host reads the verdict every step, and the reference pass runs
        self.in_place = self.compact and not self.watch.on_device and self.direction is descent and \
            self.rule == Rule(True, True)
        if self.graph:
            from .graph import StepGraph

            self.clock = torch.zeros((), dtype=torch.long, device=prob.X.device)  # steps taken, on the device
            self.replay = StepGraph(lambda: self.graph_step(self.initial, False), generators)

    def compute(self, s: ParticleState, k: int | Tensor, due: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Step k from ``s``: new a, W, the divergence verdict and (if due) the full risk."""
        design, mask, restore = self.next_design(k), self.next_mask(k), None
        if self.in_place and not bool(mask.all()):
            a, W, f, restore = kept_rows_step(design, s.a, s.W, self.lr, mask, self.keep, in_place=True)
        else:
            a, W, f = step(design, s.a, s.W, self.lr, self.rule, mask, self.keep, self.kernel, self.direction,
                           self.compact, self.next_forward(k))
        ok = within(design.loss.risk(f, design.y), self.limit) & finite(a, W)
        risk = full_risk(self.prob.design, a, W, self.output) if due else None
        if due:  # the state after the step, recorded: its full risk is held to the same limit
            ok &= within(risk, self.limit)
        if restore is not None and not bool(ok):  # s is the state to keep: put back what the step changed
            restore()
        return a, W, ok, risk

    def graph_step(self, s: ParticleState, due: bool) -> Tensor | None:
        """The next step on the device alone, written into ``s``'s tensors in place."""
        a, W, ok, risk = self.compute(s, self.clock.add_(1), due)
        for old, x in zip((s.a, s.W), self.watch.update(self.clock, ok, (a, W), (s.a, s.W)), strict=True):
            old.copy_(x)
        return risk

    def start(self) -> ParticleState:
        return self.initial

    def advance(self, s: ParticleState, k: int, due: bool) -> tuple[ParticleState, int | None]:
        read = due or self.rec.snapshot_due(k, self.steps)  # due: recorded, as the last step always is
        if self.graph:  # steps to be read, and step 1 (it loads the kernels before the capture), run eagerly
            risk = self.graph_step(s, due) if read or k == 1 else self.replay()  # a replay returns no risk
            a, W, diverged = s.a, s.W, self.watch.read(k, read)
        else:
            a, W, ok, risk = self.compute(s, k, due)
            (a, W), diverged = self.watch.keep(k, ok, (a, W), (s.a, s.W), read=read)
        if diverged is not None:
            return ParticleState(a, W, None), diverged
        self.rec.snapshot(k, self.steps, a, W)
        return ParticleState(a, W, risk), None

    def record(self, s: ParticleState, k: int) -> None:
        self.rec.record(k, s.a, s.W, s.risk)
        if k == 0:
            self.rec.snapshot(0, self.steps, s.a, s.W)

    def info(self, seed: int, execution: Execution, activation: str) -> dict:
        R, n = self.prob.shape
        X = self.prob.X
        return {"variant": self.name, "lr": self.lr, "keep": self.keep, "width": n, "replicas": R,
                "activation": activation, "backend": execution.backend, "seed": seed, "alpha": self.lr / self.keep,
                "beta": 1.0 / (n * self.keep), "steps": self.steps, "penalty": self.rule.penalty,
                "kernel_beta": self.rule.beta, "dtype": str(X.dtype).replace("torch.", ""), "device": str(X.device),
                "check_every": self.watch.every, "graph": self.graph, "threads": torch.get_num_threads(),
                "loss": self.prob.design.loss.name, "outputs": self.prob.design.outputs,
                "batch_size": self.batch_size,
                "compact": self.compact and self.rule.forward_masked and self.rule.backward_masked
                and not self.rule.independent,
                "threshold": self.limit if math.isfinite(self.limit) else None}


def simulate(
    variant: str | Rule,
    particles,
    inputs,
    targets,
    *,
    lr: float,
    keep: float,
    steps: int,
    activation: str = "tanh",
    loss: str = "squared",
    classes: int | None = None,
    batch_size: int | None = None,
    masks: Tensor | None = None,
    batches: Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    records: Records | None = None,
    execution: Execution | None = None,
    record_every: int = 1,
    test_inputs=None,
    test_targets=None,
    probe_inputs=None,
    snapshot_every: int | None = None,
    diagnostics_every: int | None = None,
    diagnostic_samples: int = 20,
    lanczos_iterations: int = 15,
    divergence_threshold: float = 1e6,
    device=None,
    dtype=None,
    backend: str = "torch",
    check_every: int | None = None,
    graph: bool = False,
    progress=None,
    threads: int | None = None,
) -> SimulationResult:
    """Run ``steps`` steps of ``variant`` (one of :data:`VARIANTS`, or a :class:`Rule`) from
    ``particles`` ``(width, p)`` or ``(replicas, width, p)`` on ``inputs (m, d)``,
    ``targets (m,)`` (see :func:`prepare`). ``lr`` is τ, ``keep`` is q. ``loss``: one of
    :data:`dropdyn.losses.LOSSES` (``"cross-entropy"`` has K = ``classes`` outputs, a
    neuron ``(a ∈ R^K, w[, b])``). Masks come from a generator seeded with ``seed``
    (default 0; runs with one seed are coupled), or from ``generator`` (not both), unless
    ``masks`` — bool ``(steps, width)`` (shared by all replicas) or ``(steps, replicas,
    width)``, or a :class:`~dropdyn.masks.MaskStream` of shape ``(replicas, width)`` — is
    given. ``batch_size`` B: minibatch steps, B samples a step (drawn from the
    seed's batch stream, shared by every run with that seed), unless ``batches`` — sample
    indices ``(steps, B)`` or ``(steps, replicas, B)`` — is given; default: the full batch.

    What to record is a :class:`Records`, how to run an :class:`Execution`; their fields are
    also keywords of their own (``record_every`` is ``Records.every``), for one-line calls.
    ``threads``: torch's intra-op threads for the call (default: :mod:`dropdyn.threads`
    chooses, leaving the cores other processes use).

    >>> import torch, dropdyn
    >>> g = torch.Generator().manual_seed(0)
    >>> X0, Z, y = torch.randn(100, 3, generator=g), torch.randn(20, 2, generator=g), torch.randn(20, generator=g)
    >>> drop = dropdyn.simulate("dropout", X0, Z, y, lr=0.5, keep=0.5, steps=50, seed=1)
    >>> bool(drop.risk[-1] < drop.risk[0]), drop.diverged_at_step, tuple(drop.particles.shape)
    (True, None, (100, 3))
    """
    records = grouped(Records, records, every=record_every, test_inputs=test_inputs, test_targets=test_targets,
                      probe_inputs=probe_inputs, snapshot_every=snapshot_every, diagnostics_every=diagnostics_every,
                      diagnostic_samples=diagnostic_samples, lanczos_iterations=lanczos_iterations)
    execution = grouped(Execution, execution, device=device, dtype=dtype, backend=backend, check_every=check_every,
                        graph=graph, divergence_threshold=divergence_threshold, progress=progress)
    lr, keep, steps, seed, records = check_run(variant, lr, keep, steps, seed, generator, records, execution)
    batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)
    with using(threads):
        prob = prepare(particles, inputs, targets, activation=activation, loss=loss, classes=classes,
                       test_inputs=records.test_inputs, test_targets=records.test_targets,
                       probe_inputs=records.probe_inputs, device=execution.device, dtype=execution.dtype,
                       materialised=execution.backend != "fused", batch_size=batch_size)
        if records.snapshot_every is not None:  # every snapshot is a copy of the particles
            count = steps // records.snapshot_every + 2
            check_memory(f"{count:,} snapshots of the particles", count * prob.X.numel() * prob.X.element_size())
        driver = ParticleDriver(variant, prob, lr=lr, keep=keep, steps=steps, seed=seed, masks=masks,
                                generator=generator, records=records, execution=execution, batch_size=batch_size,
                                batches=batches)
        state, diverged = run_loop(driver, steps, record_every=records.every, progress=execution.progress,
                                   desc=driver.name if isinstance(variant, str) else "limit")
        return driver.rec.result(state.a, state.W, lr, diverged, driver.info(seed, execution, activation))


def check_run(variant, lr, keep, steps, seed, generator, records: Records, execution: Execution):
    """Refuse bad scalar settings of :func:`simulate` in one line each; returns ``lr``,
    ``keep``, ``steps``, the seed and ``records`` as plain Python numbers."""
    if not isinstance(variant, Rule):
        check_choice("variant", variant, VARIANTS)
    if generator is not None and (seed is not None or not isinstance(generator, torch.Generator)):
        raise InputError("give a seed or a torch.Generator, not both" if seed is not None else
                         f"generator must be a torch.Generator, got {type(generator).__name__}")
    lr, keep, steps = check_positive("lr", lr), check_keep(keep), check_int("steps", steps, 0)
    snapshot_every, diagnostics_every = records.snapshot_every, records.diagnostics_every
    records = dataclasses.replace(records, every=check_int("record_every", records.every, 1),
                                  snapshot_every=None if snapshot_every is None else
                                  check_int("snapshot_every", snapshot_every, 1),
                                  diagnostics_every=None if diagnostics_every is None else
                                  check_int("diagnostics_every", diagnostics_every, 1),
                                  diagnostic_samples=check_int("diagnostic_samples", records.diagnostic_samples, 2),
                                  lanczos_iterations=check_int("lanczos_iterations", records.lanczos_iterations, 1))
    check_positive("divergence_threshold", execution.divergence_threshold)
    check_choice("backend", execution.backend, ("torch", "fused"))
    if not isinstance(execution.graph, bool):
        raise InputError(f"graph must be True or False, got {execution.graph!r}")
    return lr, keep, steps, check_seed(0 if seed is None else seed), records
