"""One width of a convergence experiment (see ``convergence``): dropout at width n and
its coupled limit, ``replicas`` replicas batched. ``convergence`` runs a sweep of these.

Writes ``summary.json`` (width, τ, q, final distances, W2) and ``arrays.npz`` (the
record times and the particle distance and output gap at each)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import at_least
from ..phase import phase_line
from .convergence import Family, check_family, run_width, w2_method


@dataclass
class Config(Family):
    width: int = setting(1000, "width n", at_least(2))

    def resolved(self) -> Config:
        """Fill the scaling from the phase's default family; check the family."""
        cfg = Config(**self.with_family())
        check_family(cfg, [cfg.width])
        return cfg


def compute(cfg: Config, ctx: Context) -> dict:
    with ctx.bar(2, f"width {cfg.width}: dropout, then its limit", unit="run") as bar:
        return run_width(cfg, cfg.width, cfg.w2_exact_max, bar)


def write(folder, cfg: Config, row: dict) -> dict:
    folder.write_npz("arrays.npz", {k: np.asarray(row[k]) for k in ("time", "particle", "output")})
    return {**{k: row[k] for k in ("width", "lr", "keep", "steps", "alpha", "beta", "w2", "diverged")},
            "particle_distance": float(row["particle"][-1]), "output_gap": float(row["output"][-1]),
            "w2_method": w2_method(cfg.width, cfg.w2_exact_max)}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    return [("phase of (n, τ, q)", phase_line(s["width"], s["lr"], s["keep"], (c["a"], c["b"])),
             f"coupled to limit {c['phase']}", verdict(None, "a classification")),
            ("particle distance at T", "→ 0 as n → ∞",
             "not measured (diverged)" if s["particle_distance"] is None else f"{s['particle_distance']:.3g}",
             verdict(None, "one width: the rate needs several (dropdyn run convergence)"))]


EXPERIMENT = Experiment("convergence-width", "one width of a convergence experiment: dropout vs its coupled limit.",
                        Config, compute, write, theory, order=11,
                        smoke=dict(phase="V", width=100, time=0.5, n_train=20, n_test=20, records=2))
run = EXPERIMENT.run
