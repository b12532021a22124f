"""The HTML report: content from the theory and the run, and — in headless Chromium —
every embedded figure decodes."""

import re
import shutil
import subprocess

import pytest
import yaml

from dropdyn.cli import main
from dropdyn.lab.report import theory_rows, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TS = ["--width", "40", "--steps", "20"]


def _render(page) -> tuple[int, int]:
    """(figures, figures loaded) as the page's own script counted them in headless Chromium."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={page.parent / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run([CHROMIUM, *flags, page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    m = re.search(r'data-figures="(\d+)" data-loaded="(\d+)"', dom)
    assert m, f"the page's load script did not run: {dom[:300]!r}"
    return int(m[1]), int(m[2])


@pytest.fixture
def run_and_sweep(tmp_path, capsys):
    assert main(["run", "teacher-student", *TS, "--out", "run", "--no-progress"]) == 0
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"experiment": "teacher-student", "name": "keeps",
                                                     "base": {"width": 40, "steps": 20},
                                                     "grid": {"keep": [0.5, 0.8]}}))
    assert main(["sweep", "s.yaml", "--store", "st", "--no-progress"]) == 0
    capsys.readouterr()
    return tmp_path / "run", tmp_path / "st" / "sweeps" / "keeps"


def test_report_shows_theory_beside_measurement(run_and_sweep, capsys):
    run, sweep = run_and_sweep
    page = write_report(run).read_text()
    assert "Theory and measurement" in page and "O(√β)" in page and page.count("data:image/png;base64,") == 2
    assert main(["report", str(sweep), "--out", "sweep.html"]) == 0
    text = open("sweep.html").read()
    assert "sweep keeps" in text and text.count("data:image/png;base64,") == 5 and "point 1" in text
    assert "Results against keep" in text  # the points' results plotted against the swept setting
    assert main(["report", "."]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_theory_rows_of_the_phase_experiments():
    rows = theory_rows("phase-cell", {"shrink": 0.9}, {"theory": "III", "empirical": "III", "ratio": 0.7})
    assert rows == [("phase of the family", "III", "nearest limit: III (distance ×0.70 per width doubling)",
                     "agrees (the nearest limit, if its distance shrinks by 0.9 per width doubling; none for a "
                     "degenerate family)")]
    assert theory_rows("phase-cell", {"shrink": 0.9}, {"theory": "III", "empirical": "I", "ratio": 0.7})[0][3] \
        .startswith("disagrees (")
    rates = {"particle": {"slope": -1.1, "ci95": [-1.3, -0.9]}, "output": {"slope": -0.2, "ci95": [-0.5, 0.1]},
             "w2": {"slope": 0.3, "ci95": [0.1, 0.5]}}
    rows = theory_rows("convergence", {"phase": "V"}, {"predicted_phase_at_largest_width": "V", "rates": rates})
    assert rows[1][2] == "n^-1.10  95% CI [-1.30, -0.90]"
    assert [r[3] for r in rows] == ["agrees (the exponents read off the largest width place it in that phase)",
                                    "agrees (the 95% interval lies below 0)", "— (the 95% interval contains 0)",
                                    "disagrees (the 95% interval lies above 0)"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package 'chromium'); "
                                              ".ci/run installs it where apt-get works")
def test_every_figure_loads_in_headless_chromium(run_and_sweep, tmp_path):
    run, sweep = run_and_sweep
    assert _render(write_report(run)) == (2, 2)
    assert _render(write_report(sweep)) == (5, 5)
    broken = tmp_path / "broken.html"  # the check can fail: a corrupt figure is not counted as loaded
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/]{40}", "base64,AAAA", (run / "report.html").read_text(), count=1))
    assert _render(broken) == (2, 1)
