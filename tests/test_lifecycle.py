"""One run lifecycle (dropdyn.lab.lifecycle) for a run of the CLI or a notebook and for a
sweep's point: running → complete, or failed with the error — on Ctrl-C too."""

import dataclasses

import pytest

from dropdyn.lab import lifecycle
from dropdyn.lab.experiment import get
from dropdyn.lab.index import RunIndex
from dropdyn.lab.sweep import make_sweep, run_sweep


def _interrupted(cfg, ctx):
    raise KeyboardInterrupt


def test_an_interrupted_run_is_failed_in_the_index_not_left_running(tmp_path):
    exp = dataclasses.replace(get("teacher-student"), compute=_interrupted)
    with pytest.raises(KeyboardInterrupt):
        exp.run(root=tmp_path, width=20, steps=2, records=1)
    (row,) = RunIndex(tmp_path).rows()
    assert row["status"] == "failed" and row["error"] == "KeyboardInterrupt"
    assert not any(p.name.startswith(".") for p in (tmp_path / "teacher-student").iterdir())  # no partial left


def test_a_run_and_a_sweep_point_share_the_lifecycle(tmp_path, monkeypatch):
    seen = []
    real = lifecycle.conduct

    def spy(experiment, cfg, folder, entry, **kw):
        seen.append((experiment.name, entry is not None and entry.sweep, kw.get("claimed", False)))
        return real(experiment, cfg, folder, entry, **kw)

    monkeypatch.setattr(lifecycle, "conduct", spy)
    monkeypatch.setattr("dropdyn.lab.sweep.conduct", spy)
    path = get("teacher-student").run(root=tmp_path, width=20, steps=2, records=1)
    sweep = make_sweep({"experiment": "teacher-student", "name": "two",
                        "base": {"width": 20, "steps": 2, "records": 1}, "grid": {"seed": [1, 2]}})
    run_sweep(sweep, tmp_path)
    assert seen == [("teacher-student", None, False), ("teacher-student", "two", True),
                    ("teacher-student", "two", True)]
    rows = {r["id"]: r for r in RunIndex(tmp_path).rows()}
    assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"complete"}
    assert rows[RunIndex(tmp_path).run_id(path)]["seconds"] > 0
