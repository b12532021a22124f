"""Results in one line: a run, the index and a sweep as pandas objects; threads set and recorded."""

import json
from pathlib import Path

import pandas as pd
import pytest

import dropdyn
from dropdyn.cli import main
from dropdyn.runs import table
from dropdyn.sweep import make_sweep, results, run_sweep


def test_load_a_run_and_the_index(tmp_path, capsys):
    store = tmp_path / "S"
    assert main(["run", "teacher-student", "--width", "30", "--steps", "10", "--store", str(store), "--no-progress",
                 "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    path = out.strip()
    assert "dropout–RaM output gap: measured" in err and "1 thread(s)" in err  # the headline, on stderr
    run = dropdyn.load(path)
    assert run.experiment == "teacher-student" and run.config["width"] == 30 and run.meta["threads"] == 1
    assert isinstance(run.metrics, pd.DataFrame) and list(run.metrics["step"])[-1] == 10
    assert run.summary["alpha"] == 2.0 and run.arrays["initial_particles"].shape == (30, 11)
    t = table(store)
    assert len(t) == 1 and t.loc[0, "status"] == "complete" and t.loc[0, "summary.alpha"] == 2.0
    assert t.loc[0, "params.width"] == 30 and t.loc[0, "started"] is not None
    with pytest.raises(ValueError, match="is not a run folder"):
        dropdyn.load(tmp_path)
    for name, damage in [("metrics.csv", b"\x00\xff"), ("arrays.npz", b"PK\x03\x04cut"), ("arrays.npz", b"")]:
        good = (Path(path) / name).read_bytes()
        (Path(path) / name).write_bytes(damage)
        with pytest.raises(dropdyn.InputError, match=f"^'{Path(path) / name}' cannot be read \\("):
            dropdyn.load(path)
        (Path(path) / name).write_bytes(good)
    assert dropdyn.load(path).arrays["initial_particles"].shape == (30, 11)


def test_the_index_keeps_a_summarys_scalars_by_dotted_name():
    from dropdyn.runs import scalar_summary

    summary = {"alpha": 2.0, "n": 3, "ok": True, "name": "x", "missing": None, "curve": [1, 2],
               "fit": {"slope": 1.1, "ci": [1.0, 1.2], "inner": {"r2": 0.9}}}
    assert scalar_summary(summary) == {"alpha": 2.0, "n": 3, "ok": True, "name": "x", "missing": None,
                                       "fit.slope": 1.1, "fit.inner.r2": 0.9}


def test_a_sweeps_results_as_a_frame(tmp_path):
    sweep = make_sweep({"experiment": "teacher-student", "base": {"width": 20, "steps": 5},
                        "grid": {"keep": [0.5, 1.0]}})
    run_sweep(sweep, tmp_path)
    frame = results(sweep, tmp_path)
    assert list(frame["keep"]) == [0.5, 1.0] and (frame["status"] == "complete").all()
    assert list(frame["alpha"]) == [2.0, 1.0]


def test_threads_default_and_flag(tmp_path):
    from dropdyn.threads import default_threads, physical_cores

    assert 1 <= default_threads() <= physical_cores()
    assert main(["run", "teacher-student", "--width", "20", "--steps", "5", "--out", str(tmp_path / "r"),
                 "--no-progress", "--threads", "2"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 2
    assert main(["phase", "--width", "100", "--lr", "1", "--keep", "0.5", "--threads", "0"]) == 2
