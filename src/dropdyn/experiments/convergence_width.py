"""One width of a convergence experiment (see ``convergence``): dropout at width n and
its coupled limit, ``replicas`` replicas batched. ``convergence`` runs a sweep of these.

Writes ``summary.json`` (width, τ, q, final distances, W2) and ``arrays.npz`` (the
record times and the particle distance and output gap at each)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._checks import check_choice, check_int
from ..store import open_run
from .convergence import DEFAULT_SCALING, Family, check_family, run_width, w2_method


@dataclass
class Config(Family):
    width: int = 1000

    def resolved(self) -> Config:
        """Validate, and fill the scaling from the phase's default family."""
        check_choice("phase", self.phase, DEFAULT_SCALING)
        check_int("width", self.width, 2)
        a, b, c_lr, c_keep = DEFAULT_SCALING[self.phase]
        given = {k: v for k, v in asdict(self).items() if v is not None}
        cfg = Config(**{"a": a, "b": b, "c_lr": c_lr, "c_keep": c_keep, **given})
        check_family(cfg, [cfg.width])
        return cfg


def run(cfg: Config, out: Path | None = None, *, root: Path = Path("runs"), force: bool = False,
        progress: bool = False) -> Path:
    cfg = cfg.resolved()
    with open_run("convergence-width", asdict(cfg), out, root=root, force=force) as folder:
        row = run_width(cfg, cfg.width, cfg.w2_exact_max)
        folder.write_npz("arrays.npz", {k: np.asarray(row[k]) for k in ("time", "particle", "output")})
        folder.write_json("summary.json", {
            **{k: row[k] for k in ("width", "lr", "keep", "steps", "alpha", "beta", "w2", "diverged")},
            "particle_distance": float(row["particle"][-1]), "output_gap": float(row["output"][-1]),
            "w2_method": w2_method(cfg.width, cfg.w2_exact_max)})
    return folder.path
