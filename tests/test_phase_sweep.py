"""The empirical phase diagram: candidate sets, the empirical rule, a small sweep."""

import json
import math

import pytest

from dropdyn.experiments.phase_sweep import Config, candidates, empirical_phase, limit_parameters, run
from dropdyn.runs import RunIndex


def test_candidates_follow_the_limiting_parameters():
    assert candidates(0.8, 0.3, 0.5, 0.5) == ["I"]
    assert candidates(0.5, 0.5, 0.5, 0.5) == ["I", "III"]
    assert candidates(1.5, 1.0, 0.5, 0.5) == ["I", "II"]
    assert candidates(1.0, 1.0, 0.5, 0.5) == ["I", "II", "III", "IV"]
    assert candidates(0.0, 0.0, 0.5, 0.5) == ["I", "III", "V"]
    p = limit_parameters(0.3, 0.6, 0.5, 0.5)
    assert math.isinf(p["alpha"]) and p["beta"] == 0


def test_empirical_rule():
    d = {500: {"I": 0.2, "III": 0.1}, 1000: {"I": 0.2, "III": 0.05}}
    assert empirical_phase(d, 0.9) == ("III", 0.5)
    flat = {500: {"I": 0.2}, 1000: {"I": 0.21}}
    assert empirical_phase(flat, 0.9)[0] == "none"
    four = {250: {"I": 0.4}, 1000: {"I": 0.1}}  # two doublings: 0.5 per doubling
    assert empirical_phase(four, 0.9) == ("I", 0.5)


def test_small_sweep_agrees_with_theory(tmp_path):
    """Six cells covering I, III, V and the degenerate region, widths 250/1000: the
    paper's claim tested at small scale (all six agreed when written; we ask for 5/6)."""
    cfg = Config(a_values="0,0.5,1", b_values="0,0.5", widths="250,1000", time=1.0, replicas=2)
    path = run(cfg, tmp_path / "s", root=tmp_path / "store")
    s = json.loads((path / "summary.json").read_text())
    assert s["cells_computed"] == 6
    # the cells are runs of the store: a second sweep reuses them all and gives the same diagram
    again = json.loads((run(cfg, tmp_path / "s2", root=tmp_path / "store") / "summary.json").read_text())
    assert again["cells_computed"] == 0 and again["cells_detail"] == s["cells_detail"]
    assert len(RunIndex(tmp_path / "store").rows(experiment="phase-cell", status="complete")) == 6
    by = {(c["a"], c["b"]): c for c in s["cells_detail"]}
    assert by[(0.5, 0.5)]["theory"] == "III" and by[(0.0, 0.5)]["theory"] == "degenerate"
    assert s["agreement_all"] >= 5 / 6
    assert (path / "phase_diagram.png").stat().st_size > 20_000
    import numpy as np

    arrays = np.load(path / "arrays.npz", allow_pickle=False)
    assert len(arrays["empirical"]) == s["cells"] == 6


@pytest.mark.parametrize("kw, match", [
    (dict(widths="500"), "at least two distinct widths"),
    (dict(a_values="x"), "'a_values' must be a comma-separated list of numbers"),
    (dict(b_values="0,-1"), "b_values must be a number in \\[0, ∞\\), got -1.0"),
    (dict(c_keep=2.0), r"c_keep must be in \(0, 1\]"),
    (dict(shrink=0), r"shrink must be a number in \(0, 1\]"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw).resolved()
