"""Dropout on deep mean-field networks (docs/theory.md §6).

L hidden layers of width n each, inputs z ∈ R^d, one output, the multilayer mean-field
parametrisation (Nguyen & Pham): every sum over a layer's units carries 1/n,

    h_1 = W_1 z,   h_{l+1} = (1/n) W_{l+1} (F_l ⊙ σ(h_l)),   f = (1/n) aᵀ (F_L ⊙ σ(h_L)),

W_1 ``(n, d)``, W_{l+1} ``(n, n)``, a ``(n,)``, forward multipliers F_l (M_l/q for a mask M_l
of layer l's units, or 1). For every parameter to move by O(1) per unit of time as n grows,
each tensor's step is the gradient of the risk R = mean_j ℓ(f(z_j), y_j) times its number
of summed-over units: τn for W_1 and a, τn² for W_{l+1}. At L = 1 this is the two-layer
engine's step X ← X − τn∇_X R on particles X_i = (a_i, W_1[i]). The hidden W_{l+1} start
correlated (:func:`init`): with i.i.d. entries alone the limit never moves from L = 3 on.

Variants (each on one mask per hidden layer per step, coupled across variants by the masks):

    dropout        ∇_θ ℓ(f_M): the masked network's gradient (masks forward and backward)
    ram            the full network's gradient, each entry thinned by the multipliers of
                   the units it touches: W_1[j, ·] by M_{1,j}/q, W_{l+1}[j, i] by
                   M_{l+1,j}/q · M_{l,i}/q, a_j by M_{L,j}/q
    forward-only   the full network's Jacobian applied to the residual of the masked
                   output: ∇_θ f_1ᵀ ℓ'(f_M)
    gd             the full network's gradient
    expected       ∇_θ E_M ℓ(f_M): exact by enumeration over every mask where that fits
                   (:data:`ENUMERATE_MAX` masks), else the mean over ``expected_samples``
                   masks drawn afresh each step (its own stream)

Replicas ``R`` run at once (a leading axis on every tensor); the gradients are autograd's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import InputError, check_choice, check_int, check_keep, check_positive
from .loop import finite
from .losses import get_loss
from .masks import draw_masks
from .model import get_activation

Tensor = torch.Tensor

VARIANTS = ("dropout", "ram", "forward-only", "gd", "expected")
ENUMERATE_MAX = 256  # the expected step enumerates every mask up to this many (2^(L·n))
EXPECTED_SEED = 7_368_787  # the expected step's Monte-Carlo masks: seed + this
INITS = ("correlated", "iid")
CORRELATION_GAIN = 4.0


@dataclass
class DeepNet:
    """Parameters of R replicas: ``first`` W_1 ``(R, n, d)``, ``hidden`` the W_{l+1}
    ``(R, n, n)`` (L − 1 of them), ``readout`` a ``(R, n)``."""

    first: Tensor
    hidden: list[Tensor]
    readout: Tensor

    @property
    def tensors(self) -> list[Tensor]:
        return [self.first, *self.hidden, self.readout]

    @property
    def layers(self) -> int:
        return len(self.hidden) + 1

    @property
    def width(self) -> int:
        return self.readout.shape[-1]

    def scales(self) -> list[float]:
        """Each tensor's mean-field step factor: n, n² for the hidden ones, n."""
        n = self.width
        return [n] + [n * n] * len(self.hidden) + [n]

    def clone(self) -> DeepNet:
        return DeepNet(self.first.clone(), [w.clone() for w in self.hidden], self.readout.clone())

    @staticmethod
    def from_tensors(ts: list[Tensor]) -> DeepNet:
        return DeepNet(ts[0], list(ts[1:-1]), ts[-1])


def init(layers: int, width: int, dim: int, *, replicas: int = 1, generator: torch.Generator,
         dtype=torch.float64, kind: str = "correlated", gain: float = CORRELATION_GAIN) -> DeepNet:
    """W_1 ~ N(0, I/d) row by row, a with N(0, 1) entries, and each W_{l+1} (theory.md §6):

        iid          W_{l+1} = Z_{l+1}, entries N(0, 1)
        correlated   W_{l+1} = Z_{l+1} + (g/√d) U_{l+1} U_lᵀ, unit types U_1 = √d W_1 ``(n, d)``
                     and U_{l+1} ``(n, d)`` with N(0, 1) entries, g = ``gain``

    Under the 1/n of each layer, Z's share of a pre-activation is O(n^−½): the iid limit starts
    with every h_{l≥2} = 0 and, from L = 3 on, never leaves it (Nguyen & Pham's degeneracy);
    the types keep every pre-activation O(1) (g = 4: RMS about 1 on N(0, I) inputs). At
    L = 1 both are the two-layer engine's ``mean_field_init``; the iid draws are the first
    draws of the correlated ones."""
    layers, width, dim = check_int("layers", layers, 1), check_int("width", width, 1), check_int("dim", dim, 1)
    check_choice("kind", kind, INITS)
    gain = check_positive("gain", gain)
    kw = dict(generator=generator, dtype=dtype)
    a = torch.randn(replicas, width, **kw)
    W1 = torch.randn(replicas, width, dim, **kw) / dim**0.5
    hidden = [torch.randn(replicas, width, width, **kw) for _ in range(layers - 1)]
    if kind == "correlated":
        types = W1 * dim**0.5
        for W in hidden:
            new = torch.randn(replicas, width, dim, **kw)
            W.baddbmm_(new, types.transpose(1, 2), alpha=gain / dim**0.5)
            types = new
    return DeepNet(W1, hidden, a)


def forward(net: DeepNet, inputs: Tensor, activation: str, multipliers: list[Tensor] | None = None) -> Tensor:
    """The output ``f (R, m)`` on ``inputs (m, d)`` with forward multipliers F_l ``(R, n)`` per
    hidden layer (None: all 1)."""
    act = get_activation(activation).fn
    n = net.width
    h = net.first @ inputs.T  # (R, n, m)
    for layer in range(net.layers):
        z = act(h)
        if multipliers is not None:
            z = z * multipliers[layer][..., None]
        if layer < net.layers - 1:
            h = net.hidden[layer] @ z / n
    return (net.readout[:, None, :] @ z).squeeze(1) / n


def _grads(net: DeepNet, fn) -> list[Tensor]:
    ts = [t.detach().requires_grad_(True) for t in net.tensors]
    return list(torch.autograd.grad(fn(DeepNet.from_tensors(ts)), ts))


def direction(variant: str, net: DeepNet, inputs: Tensor, targets: Tensor, masks: Tensor | None, keep: float,
              activation: str, loss: str, expected: Tensor | None = None) -> list[Tensor]:
    """The gradient of ``variant`` per tensor (summed over replicas' own losses, so each
    replica gets its own), for keep-masks ``masks (L, R, n)``; ``expected``: the masks
    ``(K, L, R, n)`` the expected step averages over, with their weights as a last
    row-independent factor (see :func:`expected_masks`)."""
    lo = get_loss(loss)

    def risk(f: Tensor) -> Tensor:
        return lo.risk(f, targets).sum()

    if variant == "gd":
        return _grads(net, lambda p: risk(forward(p, inputs, activation)))
    mult = None if masks is None else [m.to(net.readout.dtype) / keep for m in masks]
    if variant == "dropout":
        return _grads(net, lambda p: risk(forward(p, inputs, activation, mult)))
    if variant == "forward-only":
        def fn(p):
            full = forward(p, inputs, activation)
            return risk(full + (forward(p, inputs, activation, mult) - full).detach())
        return _grads(net, fn)
    if variant == "ram":
        g = _grads(net, lambda p: risk(forward(p, inputs, activation)))
        out = [g[0] * mult[0][..., None]]
        for layer, gw in enumerate(g[1:-1]):
            out.append(gw * mult[layer + 1][..., :, None] * mult[layer][..., None, :])
        return out + [g[-1] * mult[-1]]
    if variant == "expected":
        draws, weights = expected
        total = None
        for M, w in zip(draws, weights, strict=True):
            m = [x.to(net.readout.dtype) / keep for x in M]
            g = _grads(net, lambda p, m=m: risk(forward(p, inputs, activation, m)))
            total = [w * x for x in g] if total is None else [t + w * x for t, x in zip(total, g, strict=True)]
        return total
    raise InputError(f"variant {variant!r}: choose one of {', '.join(VARIANTS)}")


def expected_masks(layers: int, width: int, replicas: int, keep: float, samples: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The masks ``(K, L, R, n)`` and weights ``(K,)`` of the expected step: every mask of the
    L·n units with its probability where 2^(L·n) ≤ :data:`ENUMERATE_MAX` (the same for every
    replica), else ``samples`` fresh draws with weight 1/samples."""
    units = layers * width
    if 2**units <= ENUMERATE_MAX:
        bits = torch.tensor(list(itertools.product([False, True], repeat=units)))  # (K, L·n)
        kept = bits.sum(1).double()
        weights = keep**kept * (1 - keep) ** (units - kept)
        return bits.view(-1, layers, 1, width).expand(-1, layers, replicas, width), weights
    draws = torch.rand(samples, layers, replicas, width, generator=generator) < keep
    return draws, torch.full((samples,), 1.0 / samples, dtype=torch.float64)


def _two_layer(variant: str, net: DeepNet, inputs: Tensor, targets: Tensor, masks: Tensor, *, lr: float, keep: float,
               steps: int, activation: str, loss: str, every: int, probe: Tensor) -> DeepResult:
    """L = 1 is the two-layer engine (:func:`dropdyn.simulate`) on particles X_i = (a_i, W_1[i]),
    and the expected step with the squared loss its penalty GD."""
    from .engine import simulate as two_layer

    X0 = torch.cat([net.readout[..., None], net.first], -1)
    res = two_layer("penalty" if variant == "expected" else variant, X0, inputs, targets, lr=lr, keep=keep,
                    steps=steps, masks=masks, activation=activation, loss=loss, record_every=every,
                    probe_inputs=probe, progress=False)
    X = res.particles
    return DeepResult(res.steps.numpy(), res.risk.numpy(), res.outputs.numpy(),
                      DeepNet(X[..., 1:].contiguous(), [], X[..., 0].contiguous()), res.diverged_at_step)


def max_norm_radii(net: DeepNet, c: float) -> list[float]:
    """The max-norm radius of each constrained tensor (W_1, then every W_{l+1}): c times the
    tensor's row RMS norm in ``net`` — √(mean_j ‖W_1[j]‖²), and √(mean_j ‖W_{l+1}[j]‖²/n)
    (its entries are O(1), so the row's RMS is what stays O(1)). c = 1: no unit's incoming
    weights grow past their layer's typical norm in ``net`` (at the iid initialisation about 1
    for every layer; at the correlated one about 1 for W_1 and √(1 + g²) for the W_{l+1})."""
    c = check_positive("max_norm", c)
    return [c * float(W.square().sum(-1).mean().sqrt()) / scale for W, scale in _constrained(net)]


def _constrained(net: DeepNet) -> list[tuple[Tensor, float]]:
    return [(net.first, 1.0), *((w, net.width**0.5) for w in net.hidden)]


def project_max_norm(net: DeepNet, radii: list[float]) -> None:
    """Srivastava's max-norm constraint in the mean-field scale, in place: each hidden unit's
    incoming weights, a row of W_1 (‖w‖ ≤ r_1) or of W_{l+1} (‖w‖/√n ≤ r_{l+1}), scaled back
    onto the ball when outside (``radii`` from :func:`max_norm_radii`)."""
    with torch.no_grad():
        for (W, scale), r in zip(_constrained(net), radii, strict=True):
            norms = W.norm(dim=-1, keepdim=True) / scale
            W.mul_(torch.clamp(r / norms, max=1.0))


@dataclass
class DeepResult:
    """A deep run: the records' ``steps``, ``risk`` ``(records, R)`` of the full network on the
    training set, ``outputs`` ``(records, R, m_probe)`` on the probe inputs, the final ``net``
    and ``diverged_at_step`` (the first step whose state was not finite; ``net`` is then the
    state before it)."""

    steps: np.ndarray
    risk: np.ndarray
    outputs: np.ndarray
    net: DeepNet
    diverged_at_step: int | None


def simulate(variant: str, net: DeepNet, inputs: Tensor, targets: Tensor, *, lr: float, keep: float, steps: int,
             masks: Tensor | None = None, seed: int = 0, activation: str = "tanh", loss: str = "squared",
             record_every: int | None = None, probe: Tensor | None = None, expected_samples: int = 16,
             max_norm: float | None = None) -> DeepResult:
    """``steps`` steps of ``variant`` from ``net`` (not changed): each tensor moves by
    −τ·(its mean-field factor)·(the variant's gradient). ``masks`` ``(steps, L, R, n)`` bool,
    or None to draw them (seed ``seed``, so runs with one seed share their masks). Records
    every ``record_every`` steps (default: the start and the end) the risk and the outputs
    on ``probe`` (default: the inputs). At L = 1 (no max-norm; the expected step with the
    squared loss) the run is the two-layer engine's, bit for bit. ``max_norm`` c: after every
    step each hidden unit's incoming weights are projected onto the ball of c times their
    layer's row RMS norm in ``net`` (:func:`max_norm_radii`, :func:`project_max_norm`)."""
    check_choice("variant", variant, VARIANTS)
    radii = None if max_norm is None else max_norm_radii(net, max_norm)
    keep = check_keep(keep)
    lr = check_positive("lr", lr)
    steps = check_int("steps", steps, 1)
    every = steps if record_every is None else check_int("record_every", record_every, 1)
    L, R, n = net.layers, net.readout.shape[0], net.width
    if masks is None:
        masks = draw_masks(keep, steps, (L, R, n), seed=seed)
    elif tuple(masks.shape) != (steps, L, R, n):
        raise InputError(f"masks must have shape (steps, layers, replicas, width) = {(steps, L, R, n)}, "
                         f"got {tuple(masks.shape)}")
    probe = inputs if probe is None else probe
    if L == 1 and max_norm is None and (variant != "expected" or loss == "squared"):
        return _two_layer(variant, net, inputs, targets, masks[:, 0], lr=lr, keep=keep, steps=steps,
                          activation=activation, loss=loss, every=every, probe=probe)
    lo = get_loss(loss)
    generator = torch.Generator().manual_seed((seed + EXPECTED_SEED) % 2**63)
    net = net.clone()
    scales = net.scales()
    rec_steps, risks, outputs = [], [], []

    def record(k: int, p: DeepNet) -> None:
        with torch.no_grad():
            rec_steps.append(k)
            risks.append(lo.risk(forward(p, inputs, activation), targets).cpu().numpy())
            outputs.append(forward(p, probe, activation).cpu().numpy())

    record(0, net)
    diverged = None
    for k in range(1, steps + 1):
        exp = expected_masks(L, n, R, keep, expected_samples, generator) if variant == "expected" else None
        g = direction(variant, net, inputs, targets, masks[k - 1], keep, activation, loss, exp)
        new = DeepNet.from_tensors([torch.add(t, x, alpha=-lr * s) for t, s, x in zip(net.tensors, scales, g,
                                                                                        strict=True)])
        if radii is not None:
            project_max_norm(new, radii)
        if not bool(finite(*new.tensors)):
            diverged = k
            if rec_steps[-1] != k - 1:
                record(k - 1, net)
            break
        net = new
        if k % every == 0 or k == steps:
            record(k, net)
    return DeepResult(np.array(rec_steps), np.stack(risks), np.stack(outputs), net, diverged)
