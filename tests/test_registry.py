"""Every registered experiment, found by the registry as the CLI finds it, runs its declared
smoke setting end to end: one progress bar for the whole run that reaches its total, a
summary, and theory rows that name what they compare. A new experiment module is tested
here without a line of its own."""

import io
import json

import pytest
import tqdm
import tqdm.auto

from dropdyn.lab.experiment import registry


class Recorded(tqdm.tqdm):
    bars: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "file": io.StringIO()})
        self.shown = not self.disable  # (tqdm disables a bar when it closes)
        Recorded.bars.append(self)

    def close(self):
        if not self.disable and not getattr(self, "closed_at", None):
            self.closed_at = (self.n, self.total)
        super().close()


def test_every_experiment_declares_a_smoke_setting_of_its_own_fields():
    import dataclasses

    for name, exp in registry().items():
        assert exp.smoke, f"{name} declares no smoke setting"
        fields = {f.name for f in dataclasses.fields(exp.Config)}
        assert set(exp.smoke) <= fields, (name, set(exp.smoke) - fields)


@pytest.mark.parametrize("name", list(registry()))
def test_smoke_run_with_one_bar_for_the_whole_run(name, tmp_path, monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)  # the runs' bars
    monkeypatch.setattr(tqdm, "tqdm", Recorded)  # a sweep's bar over its points
    Recorded.bars = []
    exp = registry()[name]
    path = exp.run(out=tmp_path / "run", root=tmp_path / "store", progress=True, **exp.smoke)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["seconds"] >= 0
    if exp.theory is not None:
        config = json.loads((path / "config.json").read_text())
        rows = exp.theory(config["config"], summary)
        assert rows and all(len(row) == 4 and row[0] for row in rows), rows
        assert all(row[3].startswith(("agrees (", "disagrees (", "— (")) for row in rows), rows
    shown = [b for b in Recorded.bars if b.shown]
    assert len(shown) == 1, [b.desc for b in shown]
    n, total = shown[0].closed_at
    assert total > 0 and n == total
