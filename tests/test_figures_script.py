"""`make figures` (scripts/figures.py): every recipe is a valid run, every committed figure
comes from a recipe, and the results page is well-formed Markdown."""

import importlib.util
from pathlib import Path

import pytest

from dropdyn.cli import EXECUTION
from dropdyn.lab.experiment import get

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures)


@pytest.mark.parametrize("name", figures.RECIPES)
def test_recipe_resolves_and_names_its_page(name):
    import torch

    r = figures.RECIPES[name]
    settings = {k: v for k, v in r.settings.items() if k not in EXECUTION}
    if r.gpu and not torch.cuda.is_available():  # the rest of its settings are checked on the CPU
        settings["device"] = "cpu"
    get(r.experiment).resolve(settings)
    assert (ROOT / "docs" / r.page).exists()


def test_every_committed_figure_has_a_recipe():
    made = {f for r in figures.RECIPES.values() for f in r.figures.values()}
    on_cpu = {f for r in figures.RECIPES.values() if not r.gpu for f in r.figures.values()}
    committed = {p.name for p in (ROOT / "docs").glob("*.png")}
    assert on_cpu <= committed <= made  # a GPU recipe's figure lands when a GPU has run it


def test_gpu_recipes_run_on_cuda_and_are_refused_without_it(monkeypatch, capsys):
    gpu = [n for n, r in figures.RECIPES.items() if r.gpu]
    assert gpu and all(figures.RECIPES[n].settings["device"] == "cuda" for n in gpu)
    assert not any(r.settings.get("device") == "cuda" for r in figures.RECIPES.values() if not r.gpu)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert figures.main(["--only", gpu[0]]) == 2
    assert "need(s) CUDA, which is not available here" in capsys.readouterr().err


def test_results_page_escapes_table_cells():
    record = {"teacher-student": {"command": "dropdyn run teacher-student", "page": "teacher-student.md",
                                  "figures": [], "date": "2026-01-01", "seconds": 1.0, "threads": 1, "machine": "x",
                                  "theory": [["gap", "|a − b| small", "0.1\nrow"]], "summary": {"x|y": 0.5}}}
    text = figures.write_markdown(record)
    assert "| gap | \\|a − b\\| small | 0.1 row |" in text and "| `x\\|y` | 0.5 |" in text
