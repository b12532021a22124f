"""Convergence of finite-width dropout to its limit: plumbing, fits, bad input."""

import json

import numpy as np
import pytest

from dropdyn.cli import main
from dropdyn.experiments.convergence import Config, fit_rate, run


def test_fit_rate_recovers_a_power_law():
    n = np.array([100, 200, 400, 800])
    fit = fit_rate(n, 3.0 * n**-0.7 * (1 + 0.01 * np.array([1, -1, 1, -1])))
    assert abs(fit["slope"] + 0.7) < 0.02 and fit["ci95"][0] < -0.7 < fit["ci95"][1]
    two = fit_rate([100, 200], [1.0, 0.5])
    assert abs(two["slope"] + 1) < 1e-12 and np.isnan(two["ci95"][0])


def test_widths_and_scaling_are_checked():
    with pytest.raises(ValueError, match="at least two distinct widths"):
        Config(widths="500")
    with pytest.raises(ValueError, match="comma-separated list of integers"):
        Config(widths="5e2,x")
    assert Config(widths="1000,5e2,500").resolved().widths == (500, 1000)
    with pytest.raises(ValueError, match="reaches phase I, not the requested phase III"):
        Config(phase="III", a=0.8, b=0.3).resolved()
    with pytest.raises(ValueError, match="unknown phase 'VI'"):
        Config(phase="VI").resolved()


@pytest.mark.parametrize("phase", ["I", "III", "IV", "V"])
def test_run_folder_and_rates(tmp_path, phase):
    path = run(Config(phase=phase, widths="100,200,400", time=0.3, n_train=20, n_test=30, records=3),
               tmp_path / phase)
    s = json.loads((path / "summary.json").read_text())
    assert set(s["rates"]) == {"particle", "output", "w2", "particle_sup"}
    assert [f["width"] for f in s["final"]] == [100, 200, 400]
    assert (path / "convergence.png").stat().st_size > 10_000
    arrays = np.load(path / "arrays.npz", allow_pickle=False)
    assert arrays["n400_particle"].shape == arrays["n400_time"].shape
    from dropdyn.experiments.convergence import fit_rate

    sup = fit_rate([100, 200, 400], [float(np.nanmax(arrays[f"n{n}_particle"])) for n in (100, 200, 400)])
    assert s["rates"]["particle_sup"]["slope"] == pytest.approx(sup["slope"], rel=1e-12)
    c = json.loads((path / "config.json").read_text())["config"]  # the resolved family
    from dropdyn.phase import classify, scaling

    lr, keep = scaling(400, c["a"], c["b"], c["c_lr"], c["c_keep"])
    assert s["predicted_phase_at_largest_width"] == classify(400, lr, keep, embedding="powers").phase


def test_phase_V_dropout_converges_to_its_limit_at_rate_beta(tmp_path):
    """V: τ, q fixed, β = 1/(nq) → 0. The coupled particle distance is O(β): measured
    slope ≈ −1.2 over widths 250–4000 when written; here 3 widths, slope below −0.6."""
    path = run(Config(phase="V", widths="200,800,3200", time=1.0, n_train=30, n_test=30, records=2), tmp_path / "v")
    rate = json.loads((path / "summary.json").read_text())["rates"]["particle"]["slope"]
    assert rate < -0.6


def test_cli(tmp_path, capsys):
    assert main(["run", "convergence", "--phase", "V", "--widths", "50,100", "--time", "0.5",
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert main(["run", "convergence", "--phase", "III", "--widths", "100", "--out", str(tmp_path / "d")]) == 2
    assert "at least two distinct widths" in capsys.readouterr().err


def test_one_w2_method_per_run(tmp_path):
    """Widths straddling the exact-W2 limit use the sliced W2 for all of them."""
    path = run(Config(phase="V", widths="100,200", time=0.5, n_train=20, n_test=20, records=2, w2_exact_max=150),
               tmp_path / "w")
    methods = {f["w2_method"] for f in json.loads((path / "summary.json").read_text())["final"]}
    assert methods == {"sliced"}


def test_theory_rows_expect_no_pathwise_convergence_in_phase_iv():
    from dropdyn.experiments.convergence import theory

    rates = {k: {"slope": 0.01, "ci95": [-0.02, 0.04]} for k in ("particle", "output", "w2")}
    s = {"predicted_phase_at_largest_width": "III", "rates": rates}
    rows = {q: (t, v) for q, t, _, v in theory({"phase": "IV"}, s)}
    assert rows["rate of the output distance"] == ("negative (converges)", "— (the 95% interval contains 0)")
    for k in ("particle", "w2"):  # a rate that may be 0 agrees with no pathwise convergence
        assert rows[f"rate of the {k} distance"][0].startswith("not negative")
        assert rows[f"rate of the {k} distance"][1] == "agrees (the 95% interval contains 0)"
    assert {t for q, t, _, _ in theory({"phase": "III"}, s)[1:]} == {"negative (converges)"}
