"""SME experiments end to end on small settings, and the weak-error estimator."""

import json

import numpy as np
import pytest
import torch

from dropdyn.experiments import sme_generalisation, sme_order, sme_trajectories

SMALL = dict(width=6, train_size=60, replicas=4)


def test_distance_estimator_is_unbiased():
    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(50, dtype=torch.float64)
    mu[0] = 0.05  # ‖Δ‖² = 0.0025, far below the naive floor E‖â − b̂‖² ≈ 2·50/400 = 0.25
    ests, ses = [], []
    for _ in range(40):
        a = torch.randn(400, 50, generator=g, dtype=torch.float64) + mu
        b = torch.randn(400, 50, generator=g, dtype=torch.float64)
        est, se = sme_order.distance(a, b, 20)
        ests.append(est)
        ses.append(se)
    mean, se_mean = np.mean(ests), np.std(ests) / np.sqrt(len(ests))
    assert abs(mean - 0.0025) < 4 * se_mean
    assert 0.5 < np.median(ses) / np.std(ests) < 2  # the jackknife SE is calibrated
    # a deterministic comparison run (one replica)
    est, se = sme_order.distance(torch.randn(400, 3, generator=g) * 1e-3 + 1, torch.zeros(1, 3), 20)
    assert abs(est - 3) < 1e-3


def test_fit_slope_recovers_power_law():
    lrs = np.array([0.4, 0.2, 0.1, 0.05])
    fit = sme_order.fit_slope(lrs, (3 * lrs**2) ** 2, 1e-3 * (3 * lrs**2) ** 2)
    assert fit["resolved_points"] == 4 and abs(fit["slope"] - 2) < 1e-6
    unresolved = sme_order.fit_slope(lrs, lrs**2 * 1e-6, np.ones(4))
    assert unresolved["slope"] is None and unresolved["resolved_points"] == 0


def test_sme_order_run(tmp_path):
    cfg = sme_order.Config(**SMALL, lrs="0.2,0.1", keeps="0.5", time=0.2, substeps=2, batches=2)
    path = sme_order.run(cfg, tmp_path / "o")
    s = json.loads((path / "summary.json").read_text())
    assert set(s["slopes"]) == {"sme1/p=0.5", "sme2/p=0.5", "gd/p=0.5"}
    assert (path / "sme_order.png").exists() and (path / "weak_error.csv").exists()
    from dropdyn.lab.report import write_report

    assert "weak-order slope, sme2/p=0.5" in write_report(path).read_text()
    with pytest.raises(ValueError, match="time 0.3 must be a multiple of every learning rate"):
        sme_order.Config(lrs="0.2", time=0.3).resolved()


def test_sme_trajectories_and_generalisation_runs(tmp_path):
    t = sme_trajectories.run(sme_trajectories.Config(**SMALL, settings="0.1:0.9,0.2:0.5", time=1.0, records=5),
                             tmp_path / "t")
    s = json.loads((t / "summary.json").read_text())
    v = s["settings"]["lr=0.1,p=0.9"]
    assert v["max_relative_gap_mean"] < 0.5 and v["max_relative_gap_median"] < 0.5
    import pandas as pd

    table = pd.read_csv(t / "risk_lr=0.1,p=0.9.csv")  # the median lies in the min–max band; the largest risk is its max
    for d in ("dropout", "sme1"):
        assert (table[f"{d}_min"] <= table[f"{d}_median"]).all() and (table[f"{d}_median"] <= table[f"{d}_max"]).all()
    assert v["largest_risk_sme"] == table["sme1_max"][1:].max()  # after t = 0
    assert v["largest_risk_dropout"] == table["dropout_max"][1:].max()
    assert (t / "sme_trajectories.png").exists()
    g = sme_generalisation.run(sme_generalisation.Config(**SMALL, settings="0.05:0.9", time=0.5, records=5),
                               tmp_path / "g")
    s = json.loads((g / "summary.json").read_text())
    acc = s["settings"]["lr=0.05,p=0.9"]
    assert acc["gd"]["final_test_accuracy"] > 0.6  # 4 vs 9, chance is 0.5: the short run has learned something
    assert abs(acc["dropout"]["final_test_accuracy"] - acc["gd"]["final_test_accuracy"]) < 0.2
    assert (g / "sme_generalisation.png").exists()


@pytest.mark.parametrize("args, match", [
    (["--settings", "0.1:0"], "settings' keep must be in (0, 1], got 0.0"),
    (["--settings", "0.1"], "'settings' must be 2 values separated by ':', got '0.1'"),
    (["--settings=-1:0.5"], "settings' learning rate must be a finite positive number"),
    (["--width", "0"], "width must be an integer >= 1, got 0"),
    (["--train-size", "100000"], "train_size 100000 exceeds the 800 training images"),
])
def test_sme_cli_bad_input(args, match, tmp_path, dropdyn_cli):
    p = dropdyn_cli("run", "sme-trajectories", "--out", tmp_path / "r", "--time", "0.1", *args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr


def test_a_slope_through_two_step_sizes_says_so():
    from dropdyn.experiments.sme_order import measured_slope

    two = measured_slope({"slope": 2.33, "ci95": [2.2, 2.47], "resolved_points": 2})
    three = measured_slope({"slope": 1.21, "ci95": [0.56, 1.86], "resolved_points": 3})
    assert "2 step sizes resolved" in two and "2.33" in two and "step sizes" not in three
    assert measured_slope({"slope": None, "ci95": None, "resolved_points": 1}).startswith("unresolved")
