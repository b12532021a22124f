"""How fast finite-width dropout converges to its limit (docs/theory.md §2).

For a scaling family τ_n = c_lr n^(−a), q_n = c_keep n^(−b) and several widths n, run
dropout at width n and the limit that ``dropdyn.phase`` predicts, *coupled*: the same
initial particles and, where the limit has clocks, the same clock draws (the dropout
masks). Report at times t ∈ [0, T] the particle-wise distance (1/n)Σ|X_i − X̄_i|², the
output gap ‖f(μ^n_t) − f(μ_t)‖ on held-out inputs, the particle distance's sup over the
records t ≤ T (is a pathwise rate uniform in time?), and at t = T the W2 distance
between the two empirical measures (exact when every width has at most
``w2_exact_max`` particles, otherwise sliced for all widths, so the fit compares like
with like). A log–log fit against n gives each metric's rate with a 95% interval.

Limits simulated at width n (the same N = n particles):

    I    gradient flow of R, Euler step h = τ_n
    II   gradient flow of R + βP, β = 1/(n q_n), step h = τ_n
    III  Poisson clocks (thinning at h = τ_n, so they ring with prob. q_n: the masks)
    IV   critical kernel, clocks = the masks, its own Poisson forward draws
    V    Bernoulli clocks q̄ = q_n, step τ̄ = τ_n, clocks = the masks
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .._checks import InputError, check_steps, check_widths
from ..data import mean_field_init
from ..engine import record_steps, simulate
from ..lab import Context, Experiment, setting, sign_verdict, verdict
from ..lab.settings import at_least, nonnegative, one_of, positive
from ..lab.store import config_key
from ..lab.sweep import make_sweep, run_children
from ..limits import MAX_THINNING, coupled_limit
from ..masks import MaskStream
from ..metrics import output_gap, particle_distance, wasserstein2
from ..phase import PHASES, classify, family_phase, scaling
from ._runtime import EngineRuntime, widths_setting
from .teacher_student import Task

# (a, b, c_lr, c_keep) per phase: a family whose predicted limit is that phase.
DEFAULT_SCALING = {
    "I": (0.75, 0.25, 1.0, 1.0),
    "II": (1.25, 1.0, 1.0, 4.0),
    "III": (0.5, 0.5, 1.0, 1.0),
    "IV": (1.0, 1.0, 2.0, 4.0),
    "V": (0.0, 0.0, 0.5, 0.5),
}


# Phase II needs τ ≪ 1/n, hence many steps: smaller widths by default.
DEFAULT_WIDTHS = {"II": (125, 250, 500, 1000)}


@dataclass
class Family(Task, EngineRuntime):
    """The settings of a convergence experiment other than its widths (shared with
    ``convergence_width``); a, b, c_lr, c_keep default to the phase's family."""

    phase: str = setting("III", f"{', '.join(PHASES[:-1])} or {PHASES[-1]}", one_of(*DEFAULT_SCALING))
    time: float = setting(1.0, "time horizon T", positive())
    a: float | None = setting(None, "τ_n = c_lr·n^−a (default: the phase's family)", nonnegative())
    b: float | None = setting(None, "q_n = c_keep·n^−b (default: the phase's family)", nonnegative())
    c_lr: float | None = setting(None, "constant of τ_n (default: the phase's family)", positive())
    c_keep: float | None = setting(None, "constant of q_n (default: the phase's family)", positive())
    dim: int = setting(5, "input dimension d")
    n_train: int = setting(50, "training samples")
    n_test: int = setting(200, "held-out samples (the output gap's inputs)")
    label_noise: float = setting(0.0, "standard deviation of the label noise")
    records: int = setting(10, "records over [0, T]", at_least(1))
    replicas: int = setting(4, "independent replicas per width", at_least(1))
    w2_exact_max: int = setting(5000, "exact W2 up to this width, sliced W2 for every width above it", at_least(0))

    def with_family(self) -> dict:
        """These settings with the scaling (a, b, c_lr, c_keep) left unset filled from the
        phase's default family."""
        a, b, c_lr, c_keep = DEFAULT_SCALING[self.phase]
        return {"a": a, "b": b, "c_lr": c_lr, "c_keep": c_keep, **{k: v for k, v in asdict(self).items()
                                                                    if v is not None}}


@dataclass
class Config(Family):
    widths: tuple[int, ...] | None = widths_setting(None, "widths (default 250,...,4000; 125,...,1000 for II)")

    def resolved(self) -> Config:
        """Fill the scaling from the phase's default family and sort the widths; check the family."""
        widths = DEFAULT_WIDTHS.get(self.phase, (250, 500, 1000, 2000, 4000)) if self.widths is None else self.widths
        cfg = Config(**{**self.with_family(), "widths": tuple(check_widths("widths", widths))})
        check_family(cfg, cfg.widths)
        return cfg

    def width_settings(self) -> dict:
        """The settings of each width's ``convergence-width`` run (all but ``widths``)."""
        return {f.name: getattr(self, f.name) for f in fields(Family)}


def check_family(cfg, widths) -> None:
    """What a convergence config's settings must meet together: the family reaches
    ``cfg.phase``, at least one step fits in the horizon at every width."""
    large = family_phase(cfg.a, cfg.b)
    if large != cfg.phase:
        raise InputError(f"the scaling a={cfg.a:g}, b={cfg.b:g} (c_lr={cfg.c_lr:g}, c_keep={cfg.c_keep:g}) "
                         f"reaches phase {large}, not the requested phase {cfg.phase}")
    for n in widths:  # every width's run checked here, before any is computed
        lr, q = scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)
        if round(cfg.time / lr) < 1:
            raise InputError(f"time {cfg.time:g} is shorter than one step τ={lr:g} at width {n}")
        check_steps(cfg.time, lr, f" (width {n})")
        if cfg.phase in ("III", "IV") and q > MAX_THINNING:  # the limit's clocks step with h = τ: h/α = q
            raise InputError(f"phase {cfg.phase}'s coupled limit steps its Poisson clocks with h = τ, which needs "
                             f"h/α = q ≤ {MAX_THINNING:g}; at width {n} the family gives q = {q:.4g} "
                             f"(c_keep={cfg.c_keep:g}): lower c_keep or use larger widths")


def run_width(cfg: Config, n: int, exact_max: int, bar=None) -> dict:
    """Dropout at width n and its coupled limit, ``cfg.replicas`` independent replicas (initial
    particles and masks) in one batched run; metrics at the record times, averaged over
    replicas. ``bar``: a progress bar advanced by one after each of the two runs."""
    dtype = getattr(torch, cfg.dtype)
    task = cfg.task(torch.Generator().manual_seed(cfg.seed))
    R = cfg.replicas
    X0 = mean_field_init(n, cfg.dim, replicas=R, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + n))
    lr, q = scaling(n, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)
    steps = check_steps(cfg.time, lr, f" (width {n})")
    every = max(1, steps // cfg.records)
    def masks() -> MaskStream:  # the same masks for every run that draws from one, none stored
        return MaskStream(q, (R, n), cfg.seed + 1, cfg.device)

    common = dict(activation=cfg.activation, record_every=every, snapshot_every=every, probe_inputs=task.test_inputs,
                  device=cfg.device, dtype=dtype, **cfg.engine)
    drop = simulate("dropout", X0, task.inputs, task.targets, lr=lr, keep=q, steps=steps, masks=masks(), **common)
    if bar is not None:
        bar.update()
    T = steps * lr
    lim = coupled_limit(cfg.phase, X0, task.inputs, task.targets, time=T, lr=lr, masks=masks(), alpha=lr / q,
                        beta=1 / (n * q), tau=lr, keep=q, seed=cfg.seed + 2, **common)
    if bar is not None:
        bar.update()
    grid = record_steps(steps, every)  # NaN from a divergence on: nothing is measured at T then
    snap = [torch.from_numpy(r.on_grid("snapshots", grid)) for r in (drop, lim)]
    outs = [torch.from_numpy(r.on_grid("outputs", grid)) for r in (drop, lim)]
    diverged = drop.diverged_at_step or lim.diverged_at_step
    return {
        "width": n, "lr": lr, "keep": q, "steps": steps, "alpha": lr / q, "beta": 1 / (n * q),
        "time": grid * lr,
        "particle": particle_distance(*snap).mean(-1).numpy(),
        "output": output_gap(*outs).mean(-1).numpy(),
        "w2": math.nan if diverged else float(np.mean([wasserstein2(drop.particles[r], lim.particles[r],
                                                                    method=w2_method(n, exact_max), seed=cfg.seed)
                                                       for r in range(R)])),
        "diverged": diverged,
    }


def w2_method(width: int, exact_max: int) -> str:
    """Exact W2 up to ``exact_max`` particles, sliced above (the run config names the choice)."""
    return "exact" if width <= exact_max else "sliced"


def fit_rate(widths, values) -> dict:
    """Least-squares slope of log(value) on log(width) with a 95% interval (t-distribution;
    none with two widths). Values ≤ 0 are left out."""
    from scipy import stats

    x = np.log(np.asarray(widths, float))
    y = np.asarray(values, float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return {"slope": float("nan"), "ci95": [float("nan")] * 2, "points": int(ok.sum())}
    res = stats.linregress(x[ok], np.log(y[ok]))
    k = int(ok.sum())
    half = float(stats.t.ppf(0.975, k - 2) * res.stderr) if k > 2 else float("nan")
    return {"slope": float(res.slope), "intercept": float(res.intercept), "ci95": [res.slope - half, res.slope + half],
            "points": k}


def figure(rows: list[dict], rates: dict, cfg: Config):
    from matplotlib import colormaps

    from .._plot import subplots

    fig, (ax1, ax2) = subplots(1, 2, figsize=(11, 4))
    widths = np.array([r["width"] for r in rows])
    names = {"particle": "(1/n)Σ|X_i − X̄_i|²", "output": "‖f(μⁿ) − f(μ̄)‖", "w2": "W2(μⁿ, μ̄)"}
    for i, key in enumerate(("particle", "output", "w2")):
        vals = np.array([r[key][-1] if key != "w2" else r[key] for r in rows])
        fit = rates[key]
        lo, hi = fit["ci95"]
        ax1.loglog(widths, vals, "o", color=f"C{i}")
        if np.isfinite(fit["slope"]):
            ax1.loglog(widths, np.exp(fit["intercept"]) * widths ** fit["slope"], "-", color=f"C{i}",
                       label=f"{names[key]}: rate n^{fit['slope']:.2f}  [{lo:.2f}, {hi:.2f}]")
        else:  # fewer than two finite values: every width diverged, say, before T
            ax1.plot([], [], "o", color=f"C{i}", label=f"{names[key]}: no rate (fewer than two widths measured)")
    ax1.set_xticks(widths, [str(w) for w in widths])
    ax1.minorticks_off()
    ax1.set_xlabel("width n")
    ax1.set_title(f"phase {cfg.phase}: dropout vs its limit at t = {cfg.time:g} (mean of {cfg.replicas} replicas)",
                  fontsize=9)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3, which="both")
    for i, r in enumerate(rows):
        ax2.semilogy(r["time"][1:], r["particle"][1:], color=colormaps["viridis"](i / max(1, len(rows) - 1)),
                     label=f"n={r['width']}")
    ax2.set_xlabel("time t")
    ax2.set_title("coupled particle distance over time")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"τ_n = {cfg.c_lr:g}·n^−{cfg.a:g}, q_n = {cfg.c_keep:g}·n^−{cfg.b:g}", fontsize=9)
    return fig


def compute(cfg: Config, ctx: Context) -> dict:
    """Run (or resume) the sweep of widths in the store, read its points, fit the rates."""
    widths = list(cfg.widths)
    # one W2 method for every width, so that the fitted rate compares like with like
    base = {**cfg.width_settings(), "w2_exact_max": cfg.w2_exact_max if max(widths) <= cfg.w2_exact_max else 0}
    sweep = make_sweep({"experiment": "convergence-width", "name": f"convergence-{config_key(asdict(cfg))}",
                        "base": base, "list": [{"width": n} for n in widths]})
    rows, computed = run_children(sweep, ctx, "widths")
    for i, row in enumerate(rows):
        with np.load(Path(ctx.store) / sweep.run_id(i) / "arrays.npz") as arrays:
            row.update({k: arrays[k] for k in ("time", "particle", "output")})
    rates = {key: fit_rate(widths, [r[key][-1] if key != "w2" else r[key] for r in rows])
             for key in ("particle", "output", "w2")}
    rates["particle_sup"] = fit_rate(widths, [float(np.nanmax(r["particle"])) for r in rows])
    return {"rows": rows, "rates": rates, "sweep": sweep.name, "computed": computed}


def write(folder, cfg: Config, res: dict) -> dict:
    rows, rates = res["rows"], res["rates"]
    widths = [r["width"] for r in rows]
    cols = {k: [] for k in ("width", "lr", "keep", "alpha", "beta", "time", "particle_distance", "output_gap")}
    for r in rows:
        for t, pd_, og in zip(r["time"], r["particle"], r["output"], strict=True):
            for k, v in (("width", r["width"]), ("lr", r["lr"]), ("keep", r["keep"]), ("alpha", r["alpha"]),
                         ("beta", r["beta"]), ("time", t), ("particle_distance", pd_), ("output_gap", og)):
                cols[k].append(v)
    folder.write_csv("metrics.csv", {k: np.asarray(v) for k, v in cols.items()})
    folder.write_npz("arrays.npz", {f"n{r['width']}_{k}": np.asarray(r[k], dtype=float) for r in rows
                                    for k in ("time", "particle", "output", "w2")})
    folder.savefig(figure(rows, rates, cfg), "convergence")
    n_max = max(widths)
    lr, q = scaling(n_max, cfg.a, cfg.b, cfg.c_lr, cfg.c_keep)
    return {
        "phase": cfg.phase, "predicted_phase_at_largest_width": classify(n_max, lr, q, embedding="powers").phase,
        "rates": rates, "sweep": res["sweep"], "widths_computed": res["computed"],
        "final": [{"width": r["width"], "lr": r["lr"], "keep": r["keep"], "steps": r["steps"],
                   "particle_distance": r["particle_distance"], "output_gap": r["output_gap"],
                   "w2": r["w2"], "w2_method": r["w2_method"], "diverged": r["diverged"]} for r in rows],
    }


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    """The limit the family reaches, and each distance's fitted rate (negative: it converges).
    Phase IV's limit draws its own random forward passes, independent of dropout's masks: its
    particles and W2 are not expected to converge under this coupling, only the output."""
    placed = s["predicted_phase_at_largest_width"]
    rows = [("limit", f"phase {c['phase']}", f"classify at the largest width (exponents read off it): {placed}",
             verdict(placed == c["phase"], "the exponents read off the largest width place it in that phase"))]
    for k, v in s["rates"].items():
        ci = v.get("ci95") or [None, None]
        measured = "no fit" if v["slope"] is None else f"n^{v['slope']:.2f}" + (
            f"  95% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else "")
        expected, negative = "negative (converges)", True
        if c["phase"] == "IV" and k not in ("output",):
            expected = "not negative: the limit's forward passes are its own, so no pathwise convergence"
            negative = False
        what = "sup over t ≤ T of the particle distance" if k == "particle_sup" else f"the {k} distance"
        rows.append((f"rate of {what}", expected, measured, sign_verdict(v, negative)))
    return rows


EXPERIMENT = Experiment(
    "convergence", "finite-width dropout against its coupled limit (phase I–V) over widths; fitted rates.",
    Config, compute, write, theory, sweeps=True, group=lambda cfg: f"convergence-{cfg.phase}", order=10,
    smoke=dict(phase="V", widths=(100, 200), time=0.5, n_train=20, n_test=20, records=2))
run = EXPERIMENT.run
