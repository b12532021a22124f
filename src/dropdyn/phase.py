"""The phase diagram of dropout (docs/theory.md §2): place any (width, lr, keep) on it.

With τ_n = n^(−a) and q_n = n^(−b), the limit as n → ∞ depends on (a, b):

    I    0 ≤ b < min(a, 1), a > 0   gradient flow of R             (no dropout effect)
    II   b = 1 < a                  gradient flow of R + β∫P dμ     (penalty)
    III  0 < a = b < 1              Poisson-clock jumps of size α   (random geometry)
    IV   a = b = 1                  Poisson clocks + random forward (critical)
    V    a = b = 0                  Bernoulli clocks, discrete time (τ̄ > 0)
    degenerate: b > a (α = τ/q → ∞) or b > 1 (β = 1/(nq) → ∞)

A single finite (n, τ, q) has no phase of its own: the phase belongs to the family of
settings it is embedded in as n → ∞, and :func:`classify` says which embedding it used:

    "fixed"    τ and q held fixed as n grows (a = b = 0): phase V, τ̄ = τ, q̄ = q. The
               reading of one practical setting, and the default.
    "powers"   τ = n^(−a), q = n^(−b) with the exponents read off this width,
               a = −log τ / log n, b = −log q / log n. A constant factor c in τ = c·n^(−a)
               moves a by log c / log n, so constants within a factor ``factor`` (default 3)
               of one are treated as order one: the lower-dimensional sets (points IV and
               V, segment III, half-line II) are matched within tol = log(factor)/log(n) in
               (a, b). A point within 2·tol of another set gets a warning, because at that
               width the phase is not decided.
    (a, b)     the user's exponents: τ = c_lr·n^(−a), q = c_keep·n^(−b) through this point
               (:func:`family_phase`, exact).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ._checks import InputError, check_int, check_keep, check_positive

PHASES = ("I", "II", "III", "IV", "V")  # the phases with a limit; "degenerate" has none

LAWS = {
    "I": ("Wasserstein gradient flow of the risk: dropout has no effect in the limit",
          r"\partial_t\mu_t = \nabla\cdot\big(\mu_t\,\nabla V[\mu_t]\big)"),
    "II": ("Wasserstein gradient flow of the penalised risk R + β∫P dμ: the penalty survives",
           r"\partial_t\mu_t = \nabla\cdot\big(\mu_t\,\nabla (V[\mu_t] + \beta P)\big)"),
    "III": ("each neuron jumps X ← X − α∇V[μ_t](X) at the rings of its own Poisson clock of rate 1/α: "
            "random geometry (RaM)",
            r"X \leftarrow X - \alpha\,\nabla V[\mu_{t}](X)\ \text{at rings of}\ \mathrm{Poisson}(1/\alpha)"),
    "IV": ("critical: Poisson clocks of rate 1/α; a jump uses a random forward pass over the neuron "
           "itself and N ~ Poisson(1/β) neurons drawn from μ_t",
           r"X \leftarrow X - \alpha\,D\phi(X)^\top\Big(\beta\big(\phi(X)+\textstyle\sum_{l=1}^{N}\phi(Y_l)\big)"
           r"-y\Big)/m,\ N\sim\mathrm{Poisson}(1/\beta),\ Y_l\sim\mu_t"),
    "V": ("discrete time with Bernoulli clocks: each step, with probability q̄, X ← X − (τ̄/q̄)∇V[μ_k](X)",
          r"X_{k+1} = X_k - \tfrac{\bar\tau}{\bar q}\,B_k\,\nabla V[\mu_k](X_k),\ B_k\sim\mathrm{Bernoulli}(\bar q)"),
    "degenerate": ("no finite limit", r"\text{no finite limit}"),
}

# Which of dropout's three effects survive the limit (docs/theory.md §1: dropout = RaM
# thinning + penalty drift + zero-mean forward noise).
EFFECTS = {
    "I": dict(thinning=False, penalty=False, forward_noise=False),
    "II": dict(thinning=False, penalty=True, forward_noise=False),
    "III": dict(thinning=True, penalty=False, forward_noise=False),
    "IV": dict(thinning=True, penalty=True, forward_noise=True),
    "V": dict(thinning=True, penalty=False, forward_noise=False),
    "degenerate": dict(thinning=False, penalty=False, forward_noise=False),
}


@dataclass
class Phase:
    """Where (width, lr, keep) sits in the family ``embedding`` (``"fixed"``, ``"powers"`` or
    ``"exponents a=…, b=…"``; see the module docstring). ``a``/``b``: the family's exponents;
    ``distances``: distance in the (a, b) plane to each phase's set; ``warnings``:
    human-readable caveats."""

    width: int
    lr: float
    keep: float
    alpha: float
    beta: float
    a: float
    b: float
    phase: str
    reason: str
    limit: str
    latex: str
    effects: dict
    distances: dict
    warnings: list = field(default_factory=list)
    embedding: str = "fixed"

    def to_dict(self) -> dict:
        return asdict(self)

    def explain(self) -> str:
        """A few lines for a person."""
        on = [k.replace("_", " ") for k, v in self.effects.items() if v] or ["none"]
        lines = [
            f"width n={self.width}, lr τ={self.lr:g}, keep q={self.keep:g}",
            f"embedding: {EMBEDDINGS.get(self.embedding, self.embedding)}",
            f"α = τ/q = {self.alpha:.4g}, β = 1/(nq) = {self.beta:.4g}, exponents a = {self.a:.3f}, b = {self.b:.3f}",
            f"phase {self.phase}: {self.reason}",
            f"limit: {self.limit}",
            f"dropout effects that survive: {', '.join(on)}",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _seg_dist(p, u, v) -> float:
    """Distance from point p to the segment [u, v] in R²."""
    (px, py), (ux, uy), (vx, vy) = p, u, v
    dx, dy = vx - ux, vy - uy
    L = dx * dx + dy * dy
    t = 0.0 if L == 0 else max(0.0, min(1.0, ((px - ux) * dx + (py - uy) * dy) / L))
    return math.hypot(px - ux - t * dx, py - uy - t * dy)


_FAR = 1e6  # stands in for +∞ along rays


def set_distances(a: float, b: float) -> dict[str, float]:
    """Distance from (a, b) to the closure of each phase's set."""
    p = (a, b)
    d = {
        "V": math.hypot(a, b),
        "IV": math.hypot(a - 1, b - 1),
        "III": _seg_dist(p, (0, 0), (1, 1)),
        "II": _seg_dist(p, (1, 1), (_FAR, 1)),
    }
    inside_I = 0 <= b <= min(a, 1)
    d["I"] = 0.0 if inside_I else min(_seg_dist(p, (0, 0), (_FAR, 0)), _seg_dist(p, (0, 0), (1, 1)),
                                      _seg_dist(p, (1, 1), (_FAR, 1)))
    inside_deg = b >= a or b >= 1
    d["degenerate"] = 0.0 if inside_deg else min((a - b) / math.sqrt(2), 1 - b)
    return d


EMBEDDINGS = {
    "fixed": "τ and q held fixed as n → ∞ (a = b = 0)",
    "powers": "τ = n^−a, q = n^−b, exponents read off this width",
}


# Activations within the phase theory's assumptions (σ bounded, with bounded derivatives);
# ReLU is covered only with constrained weights, identity and softplus are unbounded.
THEORY_ACTIVATIONS = ("tanh", "sigmoid", "erf")


def activation_caveat(activation: str | None) -> str | None:
    """One line saying that ``activation`` is outside the phase theory's assumptions (None if
    it is within them, or not given); an unknown name is refused."""
    from .model import get_activation

    if activation is None or get_activation(activation).name in THEORY_ACTIVATIONS:
        return None
    return (f"activation {activation!r} is outside the phase theory's assumptions (σ bounded with bounded "
            f"derivatives: {', '.join(THEORY_ACTIVATIONS)}; ReLU only with constrained weights): the limits are "
            "not proved for it, only measured")


def classify(width: int, lr: float, keep: float, factor: float = 3.0, embedding="fixed",
             activation: str | None = None) -> Phase:
    """Phase of a finite (width, lr, keep) in the family ``embedding``: ``"fixed"`` (τ and q
    held as n → ∞; the default), ``"powers"`` (exponents read off this width), or a pair
    ``(a, b)`` of the user's exponents; see the module docstring. ``width ≥ 2``. With an
    ``activation`` outside the theory's assumptions (:data:`THEORY_ACTIVATIONS`) the answer
    carries a warning saying so.

    >>> ph = classify(10_000, 0.01, 0.01)
    >>> ph.phase, round(ph.alpha, 3), round(ph.beta, 4)
    ('V', 1.0, 0.01)
    >>> classify(10_000, 0.01, 0.01, embedding="powers").phase, classify(10_000, 0.01, 0.01, embedding=(0.5, 0.5)).phase
    ('III', 'III')
    """
    width = check_int("width", width, 2)
    if width > 2**53:  # past this widths are not exact as floats (and 1/(nq) underflows long before)
        raise InputError(f"width must be at most 2^53, got {width}")
    lr = check_positive("lr", lr)
    keep = check_keep(keep)
    factor = check_positive("factor", factor)
    if factor <= 1:
        raise InputError(f"factor must be > 1, got {factor!r}")
    ph = _classify(width, lr, keep, factor, embedding)
    caveat = activation_caveat(activation)
    if caveat is not None:
        ph.warnings.append(caveat)
    return ph


def _classify(width: int, lr: float, keep: float, factor: float, embedding) -> Phase:
    logn = math.log(width)
    powers = -math.log(lr) / logn + 0.0, -math.log(keep) / logn + 0.0
    if isinstance(embedding, str) and embedding in EMBEDDINGS:
        ph = _classify_powers(width, lr, keep, factor, *powers)
        if embedding == "fixed":
            fixed = _by_family(width, lr, keep, 0.0, 0.0, "fixed")
            if ph.phase != "V":
                fixed.warnings.append(f"read as powers of n at this width (embedding='powers': a = {ph.a:.3f}, "
                                      f"b = {ph.b:.3f}) it is phase {ph.phase}")
            return fixed
        return ph
    if isinstance(embedding, (tuple, list)) and len(embedding) == 2:
        a, b = (_finite_exponent(name, v) for name, v in zip("ab", embedding, strict=True))
        return _by_family(width, lr, keep, a, b, f"exponents a={a:g}, b={b:g}")
    raise InputError(f"embedding must be 'fixed', 'powers' or a pair of exponents (a, b), got {embedding!r}")


def _by_family(width: int, lr: float, keep: float, a: float, b: float, embedding: str) -> Phase:
    """The :class:`Phase` of (width, lr, keep) in the family of exponents (a, b), exactly."""
    phase = family_phase(a, b)
    reasons = {
        "V": "τ and q do not vanish (a = b = 0): τ̄ = τ, q̄ = q",
        "IV": "τ ∝ q ∝ 1/n (a = b = 1): α and β both stay of order one",
        "III": "τ ∝ q → 0 with nq → ∞ (0 < a = b < 1): α > 0, β → 0",
        "II": "q ∝ 1/n and τ ≪ q (b = 1 < a): α → 0, β > 0",
        "I": "τ ≪ q and nq → ∞ (b < min(a, 1)): α → 0, β → 0",
        "degenerate": "α = τ/q → ∞ (b > a)" if b > a else "β = 1/(nq) → ∞ (b > 1)",
    }
    text, latex = LAWS[phase]
    dist = {k: round(v, 6) for k, v in set_distances(a, b).items()}
    return Phase(width, lr, keep, lr / keep, 1.0 / (width * keep), a, b, phase, reasons[phase], text, latex,
                 dict(EFFECTS[phase]), dist, [], embedding)


def _classify_powers(width: int, lr: float, keep: float, factor: float, a: float, b: float) -> Phase:
    """The ``"powers"`` reading: (a, b) read off one width, constants within ``factor`` of one."""
    logn = math.log(width)
    tol = math.log(factor) / logn
    alpha, beta = lr / keep, 1.0 / (width * keep)
    dist = set_distances(a, b)
    warnings: list[str] = []
    # Lower-dimensional sets first (points, then segment and half-line), then the open regions.
    if dist["V"] <= tol:
        phase, reason = "V", "τ and q do not vanish (a ≈ b ≈ 0): τ̄ > 0, q̄ = q"
    elif dist["IV"] <= tol:
        phase, reason = "IV", "τ ≈ q ≈ 1/n (a ≈ b ≈ 1): α and β both stay of order one"
    elif dist["III"] <= tol and 0 < min(a, b) and max(a, b) < 1:
        phase, reason = "III", "τ ∝ q → 0 with nq → ∞ (0 < a ≈ b < 1): α > 0, β → 0"
    elif dist["II"] <= tol and a > 1:
        phase, reason = "II", "q ∝ 1/n and τ ≪ q (b ≈ 1 < a): α → 0, β > 0"
    elif b > a:
        phase, reason = "degenerate", "α = τ/q → ∞ (b > a): a neuron's rare jumps become unboundedly large"
    elif b > 1:
        phase, reason = "degenerate", "β = 1/(nq) → ∞ (b > 1): almost no neuron is kept"
    else:
        phase, reason = "I", "τ ≪ q and nq → ∞ (b < min(a, 1)): α → 0, β → 0"
    lower = PHASES[1:]
    near = [k for k in lower if k != phase and dist[k] <= 2 * tol]
    if phase in ("I", "degenerate"):
        other = "degenerate" if phase == "I" else "I"
        near += [other] if dist[other] <= 2 * tol else []
    if near:
        warnings.append(f"(a, b) = ({a:.3f}, {b:.3f}) is within {2 * tol:.3f} of {', '.join(near)}: at width "
                        f"{width} the phase is not decided; compare several widths (dropdyn run convergence)")
    if phase in lower and dist[phase] > 1e-9:
        warnings.append(f"(a, b) is {dist[phase]:.3f} from phase {phase}'s set, matched within "
                        f"tol = log({factor:g})/log({width}) = {tol:.3f}")
    if width < 100:
        warnings.append(f"width {width} is small: exponents −log τ/log n, −log q/log n are poorly determined")
    text, latex = LAWS[phase]
    dist = {k: round(v, 6) for k, v in dist.items()}
    return Phase(width, lr, keep, alpha, beta, a, b, phase, reason, text, latex, dict(EFFECTS[phase]),
                 dist, warnings, "powers")


def phase_line(width, lr, keep, embedding="fixed") -> str:
    """``"III (embedding): <limit in words>"`` for a setting in the family ``embedding`` (see
    :func:`classify`), or why it cannot be classified (for reports)."""
    try:
        ph = classify(int(width), float(lr), float(keep), embedding=embedding)
    except (TypeError, ValueError) as e:
        return f"(cannot classify: {e})"
    return f"{ph.phase} ({EMBEDDINGS.get(ph.embedding, ph.embedding)}): {ph.limit}"


def family_phase(a: float, b: float) -> str:
    """Phase of the scaling family τ_n ∝ n^(−a), q_n ∝ n^(−b) (exact, in the (a, b) plane)."""
    a = _finite_exponent("a", a)
    b = _finite_exponent("b", b)
    eps = 1e-9
    if b < -eps:
        raise InputError(f"b must be >= 0 (q ≤ 1), got {b!r}")
    if b > a + eps or b > 1 + eps:
        return "degenerate"
    if abs(a) <= eps and abs(b) <= eps:
        return "V"
    if abs(a - 1) <= eps and abs(b - 1) <= eps:
        return "IV"
    if abs(a - b) <= eps:
        return "III"
    if abs(b - 1) <= eps:
        return "II"
    return "I"


def _finite_exponent(name: str, value) -> float:
    if isinstance(value, bool):
        raise InputError(f"exponent {name} must be a finite number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"exponent {name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"exponent {name} must be a finite number, got {value!r}")
    return v


def scaling(width: int, a: float, b: float, c_lr: float = 1.0, c_keep: float = 1.0) -> tuple[float, float]:
    """``(τ_n, q_n) = (c_lr n^(−a), c_keep n^(−b))`` of a scaling family at one width."""
    width = check_int("width", width, 1)
    a, b = _finite_exponent("a", a), _finite_exponent("b", b)
    lr = check_positive("c_lr", c_lr) * float(width) ** (-a)
    keep = check_positive("c_keep", c_keep) * float(width) ** (-b)
    if not 0 < lr < math.inf:
        raise InputError(f"τ = c_lr·n^(−a) = {lr:g} at width {width} (a = {a:g}): it must be a positive number")
    if not 0 < keep <= 1:
        raise InputError(f"keep = c_keep·n^(−b) = {keep:g} at width {width} is outside (0, 1]")
    return lr, keep


def draw_diagram(ax=None, marks=()):
    """The theoretical (a, b) diagram on ``ax`` (default: a new pyplot figure, so that a
    notebook shows it); ``marks``: iterable of (width, lr, keep) to place. Returns ``ax``."""
    from matplotlib.patches import Polygon

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 5))
    amax, bmax = 2.0, 1.5
    ax.add_patch(Polygon([(0, 0), (amax, 0), (amax, 1), (1, 1)], color="C0", alpha=0.25,
                         label="I: gradient flow of R"))
    ax.add_patch(Polygon([(0, 0), (1, 1), (amax, 1), (amax, bmax), (0, bmax)], facecolor="0.85",
                         edgecolor="0.6", hatch="//", label="degenerate (α→∞ or β→∞)"))
    ax.plot([1, amax], [1, 1], color="C2", lw=3, label="II: penalised gradient flow")
    ax.plot([0, 1], [0, 0 + 1], color="C1", lw=3, label="III: Poisson-clock jumps (RaM)")
    ax.plot([1], [1], "o", color="C3", ms=10, label="IV: critical kernel")
    ax.plot([0], [0], "s", color="C4", ms=10, label="V: Bernoulli clocks")
    for width, lr, keep in marks:  # placed by the exponents read off their width
        ph = classify(width, lr, keep, embedding="powers")
        ax.plot([ph.a], [ph.b], "*", color="k", ms=12)
        ax.annotate(f"n={width:g}, τ={lr:g}, q={keep:g}\n→ {ph.phase}", (ph.a, ph.b), fontsize=7,
                    textcoords="offset points", xytext=(6, 4))
    ax.set_xlim(-0.05, amax)
    ax.set_ylim(-0.05, bmax)
    ax.set_xlabel("a  (τ = n^−a)")
    ax.set_ylabel("b  (q = n^−b)")
    ax.set_title("phase diagram of dropout (mean-field, n → ∞)")
    ax.legend(fontsize=7, loc="upper right")
    return ax
