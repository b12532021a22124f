"""The particle engine: one step rule for every variant, and the run loop.

Every variant of THEORY.md §1 is the same step

    X_i ← X_i − τ B_i Dφ(X_i)ᵀ ( (1/n) Σ_j F_j φ(X_j) − y + c φ(X_i) ) / m

with forward multipliers F, backward multipliers B (each either ``mask/q`` or 1) and a
penalty coefficient c (THEORY.md §1, table of variants):

    variant        F        B        c
    dropout        mask/q   mask/q   0
    ram            1        mask/q   0
    forward-only   mask/q   1        0
    penalty        1        1        (1 − q)/(n q)
    gd             1        1        0

Dropout's forward and backward both vanish on dropped neurons, so its step is
computed on the kept neurons only (cost ∝ q·width).

The limits of THEORY.md §2 are rules of the same step (``dropdyn.limits``); the
critical phase IV replaces the shared forward pass by one random forward pass per
moving neuron (``Rule.critical``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
from .masks import MaskStream
from .model import Design, descent, features, forward, grad_potential

Tensor = torch.Tensor


@dataclass(frozen=True)
class Rule:
    """One step's multipliers: F = mask/q if ``forward_masked`` else 1, likewise B;
    ``penalty`` is c. With ``critical``, each moving neuron i instead sees its own random
    forward pass β(φ(X_i) + Σ_{l≤N_i} φ(Y_l)), N_i ~ Poisson(1/β), Y_l drawn uniformly
    from the current particles, with β = ``penalty`` (THEORY.md §2, phase IV)."""

    forward_masked: bool
    backward_masked: bool
    penalty: float = 0.0
    critical: bool = False

    @property
    def uses_masks(self) -> bool:
        return self.forward_masked or self.backward_masked


VARIANTS = ("dropout", "ram", "forward-only", "penalty", "gd")


def rule_for(variant: str, width: int, keep: float) -> Rule:
    """The :class:`Rule` of a named variant at this width and keep rate."""
    check_choice("variant", variant, VARIANTS)
    if variant == "dropout":
        return Rule(True, True)
    if variant == "ram":
        return Rule(False, True)
    if variant == "forward-only":
        return Rule(True, False)
    if variant == "penalty":
        return Rule(False, False, (1.0 - keep) / (width * keep))
    return Rule(False, False)


def _gather(a: Tensor, W: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``idx (R, K)`` of ``a (R, n)`` and ``W (R, n, P)``, and their flat row indices."""
    R, n = a.shape
    rows = (idx + n * torch.arange(R, device=a.device)[:, None]).reshape(-1)
    P = W.shape[-1]
    a_s = a.reshape(-1).index_select(0, rows).view(idx.shape)
    W_s = W.reshape(-1, P).index_select(0, rows).view(*idx.shape, P)
    return a_s, W_s, rows


def _scatter(a: Tensor, W: Tensor, rows: Tensor, a_s: Tensor, W_s: Tensor) -> tuple[Tensor, Tensor]:
    """New ``a``, ``W`` with the rows ``rows`` replaced (inverse of :func:`_gather`)."""
    P = W.shape[-1]
    a = a.reshape(-1).index_copy(0, rows, a_s.reshape(-1)).view(a.shape)
    W = W.reshape(-1, P).index_copy(0, rows, W_s.reshape(-1, P)).view(W.shape)
    return a, W


def _critical_step(design: Design, a: Tensor, W: Tensor, lr: float, beta: float, mask: Tensor,
                   keep: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Phase IV kernel: each neuron with ``mask`` moves by
    −(lr/q) Dφ(X_i)ᵀ(β(φ(X_i) + Σ_{l≤N_i} φ(Y_l)) − y)/m. Per-neuron forward passes do not
    fit the fused shared-residual pass, so this uses the reference closed forms."""
    R, n = a.shape
    idx, valid = _kept_first(mask)
    K = idx.shape[1]
    if K == 0:  # no clock rang
        return a, W, torch.zeros_like(design.y).expand(R, -1)
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
    return a, W, r


def step(
    design: Design, a: Tensor, W: Tensor, lr: float, rule: Rule, mask: Tensor | None, keep: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply one step to neurons ``a (R, n)``, ``W (R, n, P)`` with keep-mask ``mask``
    (``(R, n)`` bool, or None for mask-free rules). Returns new ``a``, ``W`` and the
    residual ``r (R, m)`` of the step's (possibly thinned) forward pass (for a critical
    rule: the mean residual of the moving neurons). ``generator`` feeds the critical
    rule's random forward passes."""
    R, n = a.shape
    if rule.critical:
        return _critical_step(design, a, W, lr, rule.penalty, mask, keep, generator)
    mult = None if mask is None else mask.to(a.dtype) * (1.0 / keep)
    if rule.forward_masked and rule.backward_masked and not bool(mask.all()):
        # Only kept neurons enter the forward pass or move: compact them, per replica
        # padded to the largest count with zero weight (padding rows are dropped
        # neurons, so every row index is unique).
        idx, valid = _kept_first(mask)
        mult = valid.to(a.dtype) * (1.0 / keep)
        a_s, W_s, rows = _gather(a, W, idx)
        ga, gW, r = descent(design, a_s, W_s, mult * (1.0 / n), rule.penalty)
        a, W = _scatter(a, W, rows, a_s - lr * (mult * ga), W_s - lr * (mult[..., None] * gW))
        return a, W, r
    fw = mult if rule.forward_masked else torch.ones_like(a)
    ga, gW, r = descent(design, a, W, fw * (1.0 / n), rule.penalty)
    if rule.backward_masked:
        ga, gW = mult * ga, mult[..., None] * gW
    return a - lr * ga, W - lr * gW, r


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
    of the full network), ``test_risk``, ``outputs`` (f on the probe inputs,
    ``(records, [R,] m_probe)``). ``snapshots`` are particles at ``snapshot_steps``.
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
    masks: Tensor | None = None,
    seed: int = 0,
    record_every: int = 1,
    test_inputs=None,
    test_targets=None,
    probe_inputs=None,
    snapshot_every: int | None = None,
    divergence_threshold: float = 1e6,
    device=None,
    dtype=None,
    progress: bool = False,
) -> SimulationResult:
    """Run ``steps`` steps of ``variant`` (one of :data:`VARIANTS`, or a :class:`Rule`) from
    ``particles``.

    ``particles``: ``(width, p)`` or ``(replicas, width, p)`` with ``p = d + 1`` (neuron
    ``(a, w)``) or ``d + 2`` (``(a, w, b)``); ``inputs``: ``(m, d)``; ``targets``: ``(m,)``.
    ``lr`` is τ, ``keep`` is q. Masks come from a generator seeded with ``seed`` (runs
    with one seed are coupled) unless ``masks`` — bool ``(steps, width)`` (shared by all
    replicas) or ``(steps, replicas, width)`` — is given. The run stops at the first step
    whose risk exceeds ``divergence_threshold · (1 + R_0)`` or is non-finite.
    Computation uses ``dtype``/``device`` (default: the particles'), float64 if the
    particles are not floating point.
    """
    if not isinstance(variant, Rule):
        check_choice("variant", variant, VARIANTS)
    seed = check_seed(seed)
    lr = check_positive("lr", lr)
    keep = check_keep(keep)
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    if snapshot_every is not None:
        snapshot_every = check_int("snapshot_every", snapshot_every, 1)
    if not isinstance(particles, Tensor):
        particles = _as_tensor("particles", particles, torch.float64, "cpu")
    dtype = dtype or (particles.dtype if particles.is_floating_point() else torch.float64)
    device = check_device(device) if device is not None else particles.device
    X = _as_tensor("particles", particles, dtype, device)
    Z = _as_tensor("inputs", inputs, dtype, device)
    y = _as_tensor("targets", targets, dtype, device)
    if Z.dim() != 2:
        raise InputError(f"inputs must have shape (n_samples, d), got {tuple(Z.shape)}")
    m, d = Z.shape
    if m < 1:
        raise InputError(f"inputs must hold at least one sample, got shape {tuple(Z.shape)}")
    if y.shape != (m,):
        raise InputError(f"targets must have shape ({m},) to match inputs, got {tuple(y.shape)}")
    if X.dim() not in (2, 3):
        raise InputError(f"particles must have shape (width, p) or (replicas, width, p), got {tuple(X.shape)}")
    if X.shape[-1] not in (d + 1, d + 2):
        raise InputError(
            f"particles have p={X.shape[-1]} coordinates but inputs have d={d}: "
            f"p must be d+1 (a, w) or d+2 (a, w, b)"
        )
    batched = X.dim() == 3
    X3 = X if batched else X[None]
    R, n = X3.shape[:2]
    if n < 1 or R < 1:
        raise InputError(f"width and replicas must be >= 1, got particles of shape {tuple(X.shape)}")
    check_memory(f"a step at width {n} with {R} replica(s) and {m} samples", 4 * R * n * (m + X.shape[-1])
                 * X.element_size(), device)
    rule = variant if isinstance(variant, Rule) else rule_for(variant, n, keep)
    if masks is not None:
        masks = _check_masks(masks, steps, R, n, batched, device)
    bias = X.shape[-1] == d + 2
    design = Design.build(Z, y, activation, bias)

    def side_design(name, xs, ys):
        if xs is None:
            return None
        xs = _as_tensor(name, xs, dtype, device)
        if xs.dim() != 2 or xs.shape[1] != d:
            raise InputError(f"{name} must have shape (n, {d}), got {tuple(xs.shape)}")
        if ys is None:
            ys = xs.new_zeros(xs.shape[0])
        ys = _as_tensor(name.replace("inputs", "targets"), ys, dtype, device)
        if ys.shape != (xs.shape[0],):
            raise InputError(f"test_targets must have shape ({xs.shape[0]},), got {tuple(ys.shape)}")
        return Design.build(xs, ys, activation, bias)

    if (test_inputs is None) != (test_targets is None):
        raise InputError("test_inputs and test_targets must be given together")
    test_design = side_design("test_inputs", test_inputs, test_targets)
    probe_design = side_design("probe_inputs", probe_inputs, None)

    a, W = design.pack(X3)
    full = torch.full((R, n), 1.0 / n, dtype=dtype, device=device)
    stream = MaskStream(keep, (R, n), seed, device) if rule.uses_masks and masks is None else None
    kernel_gen = None
    if rule.critical:  # its own stream, so that given masks and drawn masks see the same kernel draws
        kernel_gen = torch.Generator(device=device)
        kernel_gen.manual_seed(int(seed) + 7919)

    rec = {"steps": [], "risk": [], "test_risk": [], "outputs": []}
    snaps, snap_steps = [], []

    def full_risk(des, a, W):
        r = forward(des, a, W, full)[0] - des.y
        return 0.5 * (r * r).mean(-1)

    def record(k, risk=None):
        rec["steps"].append(k)
        rec["risk"].append(full_risk(design, a, W) if risk is None else risk)
        if test_design is not None:
            rec["test_risk"].append(full_risk(test_design, a, W))
        if probe_design is not None:
            rec["outputs"].append(forward(probe_design, a, W, full)[0])

    record(0)
    if snapshot_every is not None:
        snaps.append(design.unpack(a, W))
        snap_steps.append(0)
    limit = divergence_threshold * (1.0 + float(rec["risk"][0].max()))
    diverged = None
    name = variant if isinstance(variant, str) else repr(variant)
    bar = _progress(steps, progress, name if isinstance(variant, str) else "limit")
    for k in range(1, steps + 1):
        mask = None
        if rule.uses_masks:
            mask = masks[k - 1] if masks is not None else stream.next()
        a_new, W_new, r = step(design, a, W, lr, rule, mask, keep, kernel_gen)
        thinned = 0.5 * (r * r).mean(-1)
        ok = (torch.isfinite(thinned) & (thinned <= limit)).all()
        ok &= torch.isfinite(a_new).all() & torch.isfinite(W_new).all()
        recording = k % record_every == 0 or k == steps
        risk = full_risk(design, a_new, W_new) if recording else None
        if recording:  # the full network's risk can overflow where the thinned one did not
            ok &= torch.isfinite(risk).all()
        if not bool(ok):
            diverged = k
            break
        a, W = a_new, W_new
        if recording:
            record(k, risk)
        if snapshot_every is not None and (k % snapshot_every == 0 or k == steps):
            snaps.append(design.unpack(a, W))
            snap_steps.append(k)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if diverged is not None and rec["steps"][-1] != diverged - 1:
        record(diverged - 1)

    def stack(xs):
        if not xs:
            return None
        t = torch.stack(xs).cpu()
        return t if batched else t[:, 0]

    steps_t = torch.tensor(rec["steps"])
    return SimulationResult(
        particles=(design.unpack(a, W) if batched else design.unpack(a, W)[0]).cpu(),
        steps=steps_t,
        times=steps_t.to(torch.float64) * lr,
        risk=stack(rec["risk"]),
        test_risk=stack(rec["test_risk"]),
        outputs=stack(rec["outputs"]),
        snapshots=stack(snaps),
        snapshot_steps=torch.tensor(snap_steps) if snap_steps else None,
        diverged_at_step=diverged,
        info={"variant": name, "lr": lr, "keep": keep, "width": n, "replicas": R,
              "activation": activation, "seed": seed, "alpha": lr / keep,
              "beta": 1.0 / (n * keep), "steps": steps, "penalty": rule.penalty,
              "dtype": str(dtype).replace("torch.", ""), "device": str(device),
              "threshold": limit if math.isfinite(limit) else None},
    )


def _progress(total: int, enabled: bool, desc: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, mininterval=0.5)
