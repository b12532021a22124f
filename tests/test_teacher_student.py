"""The teacher–student experiment end to end, and the theory's claim it illustrates."""

import csv
import json

import numpy as np

from dropdyn.experiments.teacher_student import Config, compute, run
from dropdyn.lab.experiment import Context


def test_run_folder_contents(tmp_path):
    cfg = Config(width=60, steps=20, n_train=20, n_test=30, records=5)
    path = run(cfg, tmp_path / "ts")
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "summary.json", "metrics.csv", "arrays.npz", "risk.png", "risk.svg",
            "gap.png", "gap.svg"} <= names
    meta = json.loads((path / "config.json").read_text())
    assert meta["config"]["width"] == 60 and meta["seed"] == 0
    assert {"dropdyn", "torch"} <= set(meta["versions"])
    rows = list(csv.DictReader((path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 4, 8, 12, 16, 20]
    for v in ("dropout", "ram", "penalty", "gd"):
        assert np.isfinite(float(rows[-1][f"{v}_train_risk"]))
    assert float(rows[0]["gap_particle_dropout_ram"]) == 0.0  # same initial particles
    arrays = np.load(path / "arrays.npz")
    assert arrays["dropout_final_particles"].shape == (60, 11)


def test_same_seed_same_numbers():
    cfg = Config(width=50, steps=15, n_train=20, n_test=20, records=3)
    a, b = compute(cfg, Context()), compute(cfg, Context())
    assert np.array_equal(a["dropout_train_risk"], b["dropout_train_risk"])
    assert np.array_equal(a["gap_particle"], b["gap_particle"])


def test_dropout_approaches_ram_as_width_grows():
    """THEORY.md §2: at fixed α = τ/q, β = 1/(nq) → 0 and coupled dropout → RaM. The
    forward noise is O(β) in variance, so 16× the width should shrink the particle gap
    several-fold. Measured at widths 200/800/3200: 0.53/0.20/0.068, i.e. ∝ n^−0.74
    (7.8× over 16× the width); we ask for 4×."""
    gaps = []
    for width in (200, 3200):
        res = compute(Config(width=width, lr=0.5, keep=0.5, steps=200, n_train=50, n_test=20, records=4), Context())
        gaps.append(res["gap_particle"][-1])
    assert gaps[1] < gaps[0] / 4, gaps
