"""The deep phase cell (dropdyn.experiments.deep_cell, docs/theory.md §6): the limit each
variant has in a family, the placement rule on given gaps, the work cap on the widths, and
a small cell end to end."""

import json

import pytest

from dropdyn.experiments import deep_cell
from dropdyn.experiments.deep_cell import Config, agrees, behaves_like, cell_widths, limit_of, nearest


@pytest.mark.parametrize(("a", "b", "ram", "expected"), [
    (0.5, 0.0, "I", "I"),        # α = τ/q → 0, β = 1/(nq) → 0
    (1.25, 1.0, "I", "II"),      # α → 0, β = 1/c_keep
    (0.5, 0.5, "III", "I"),      # α = c_lr/c_keep, τ → 0
    (0.0, 0.0, "V", "I"),        # α finite and τ fixed
    (0.5, 0.75, "none", "I"),    # α → ∞: the degenerate region
])
def test_each_variant_limit_in_each_family(a, b, ram, expected):
    assert limit_of("ram", a, b, 0.5, 0.5) == ram
    assert limit_of("expected", a, b, 0.5, 0.5) == expected
    assert limit_of("gd", a, b, 0.5, 0.5) == "I"


def _cell(rms=1.0, **by_width):
    return {"a": 0.5, "b": 0.5, "output_rms": {n[1:]: rms for n in by_width},
            "gaps": {n[1:]: {k: {"output": v, "parameters": 0.0} for k, v in g.items()} for n, g in by_width.items()}}


def test_the_nearest_shrinking_gap_names_the_phase():
    cfg = Config(a=0.5, b=0.5, widths=(100, 400))
    near_ram = _cell(n100={"ram": 0.4, "expected": 1.0, "gd": 1.0}, n400={"ram": 0.1, "expected": 1.0, "gd": 1.0})
    like, ratio = behaves_like(near_ram, cfg)
    assert like == "III" and ratio == pytest.approx(0.5)  # 0.4 → 0.1 over two doublings
    shrinking_output = {**near_ram, "output_rms": {"100": 4.0, "400": 1.0}}  # relative gap 0.1 → 0.1
    assert behaves_like(shrinking_output, cfg) == ("none", pytest.approx(1.0))
    assert behaves_like({**near_ram, "output_rms": {"100": 0.8, "400": 0.15}}, cfg)[0] == "none"  # gap ⅔ output
    flat = _cell(n100={"ram": 0.1, "expected": 1.0, "gd": 1.0}, n400={"ram": 0.095, "expected": 1.0, "gd": 1.0})
    assert behaves_like(flat, cfg)[0] == "none"  # nearest, but not shrinking by 0.9 a doubling
    near_gd = _cell(n100={"ram": 1.0, "expected": 1.0, "gd": 0.3}, n400={"ram": 1.0, "expected": None, "gd": 0.01})
    assert behaves_like(near_gd, cfg)[0] == "I"  # None: a diverged run's gap, in the JSON
    assert behaves_like(_cell(n100={"ram": None, "expected": None, "gd": None},
                              n400={"ram": None, "expected": None, "gd": None}), cfg) == ("none", None)
    assert agrees({"two_layer_theory": "IV", "behaves_like": "none"})
    assert not agrees({"two_layer_theory": "III", "behaves_like": "I"})


def test_the_work_cap_leaves_out_the_widest_widths_but_never_two():
    # phase II's family: steps = T/τ = n^(5/4) at c_lr = 1, T = 1; work = steps·L·n²
    cfg = Config(a=1.25, b=1.0, c_lr=1.0, time=1.0, layers=2, widths=(16, 32, 64, 128))
    assert cell_widths(cfg) == (16, 32, 64, 128)
    work = {n: deep_cell.steps_at(cfg, n) * 2 * n * n for n in cfg.widths}
    capped = Config(**{**cfg.__dict__, "max_work": work[64]})
    assert cell_widths(capped) == (16, 32, 64)
    assert cell_widths(Config(**{**cfg.__dict__, "max_work": 1.0})) == (16, 32)
    assert deep_cell.cost(capped.__dict__) == pytest.approx(sum(work[n] for n in (16, 32, 64)))


def test_a_small_cell_measures_its_capped_widths(tmp_path):
    path = deep_cell.run(None, tmp_path / "cell", progress=False, a=0.5, b=0.5, layers=2, widths=(6, 12, 24),
                         time=0.1, replicas=1, expected_samples=2, max_work=1.0)
    summary = json.loads((path / "summary.json").read_text())
    assert sorted(summary["gaps"], key=int) == ["6", "12"] == sorted(summary["output_rms"], key=int)
    assert summary["behaves_like"] in ("I", "III", "none") and summary["output_rms"]["12"] > 0


def test_deep_cells_are_compared_with_their_family_at_one_hidden_layer():
    from dropdyn.experiments.deep_phase import like_two_layers

    cell = lambda L, a, like: {"layers": L, "a": a, "b": a, "behaves_like": like}  # noqa: E731
    cells = [cell(1, 0.5, "III"), cell(1, 0.0, "V"), cell(2, 0.5, "III"), cell(2, 0.0, "I"), cell(3, 0.5, "none"),
             cell(2, 1.0, "II")]  # no L = 1 cell for a = b = 1: not compared
    assert like_two_layers(cells) == (1, 3)


def test_the_nearest_variant_in_parameters_has_its_own_ratio():
    cell = _cell(n100={"ram": 0.4, "expected": 1.0, "gd": 1.0}, n400={"ram": 0.1, "expected": 1.0, "gd": 1.0})
    for g in cell["gaps"].values():
        g["gd"]["parameters"], g["ram"]["parameters"], g["expected"]["parameters"] = 0.2, 0.3, 0.4
    assert nearest(cell, "parameters") == ("gd", pytest.approx(1.0))
    assert nearest(cell) == ("ram", pytest.approx(0.5))


def test_the_sweep_rows_survive_a_blown_up_cell():
    from dropdyn.experiments import deep_phase

    blown = {**_cell(n100={"ram": None, "expected": None, "gd": None}, n400={"ram": None, "expected": None,
                                                                            "gd": None}),
             "layers": 2, "two_layer_theory": "III", "behaves_like": "none", "ratio": None,
             "output_rms": {"100": 3.0, "400": None}, "rates": {}}
    rows = deep_phase.theory({}, {"agreement": 0.0, "cells": 1, "like_two_layers": 0, "compared_with_two_layers": 0,
                                  "cells_detail": [blown]})
    assert "output RMS 3 → —" in rows[-1][2]
