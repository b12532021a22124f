"""Each experiment shows the progress of the whole run on one bar, which reaches its total."""

import io

import pytest
import tqdm
import tqdm.auto

from dropdyn.experiment import get

SME = dict(width=6, train_size=60, replicas=4)
CASES = {
    "teacher-student": dict(width=50, steps=20, records=5),
    "mnist-binary": dict(input_size=7, width=50, time=2.0, small_width=20, small_time=0.5, records=5),
    "sharpness": dict(width=30, steps=20, points=4, lr_min=0.5, lr_max=30.0, keeps="0.5"),
    "srivastava": dict(hidden=16, epochs=2, datasets="digits", mc_repeats=1),
    "alignment": dict(pairs="0.05:0.5", hidden=8, epochs=2, every=1, batch=50, samples=5, eigenvectors=3,
                      noise_steps=3),
    "sme-trajectories": dict(SME, settings="0.1:0.9,0.2:0.5", time=1.0, records=5),
    "sme-order": dict(SME, lrs="0.2,0.1", keeps="0.5", time=0.2, substeps=2, batches=2),
    "sme-generalisation": dict(SME, settings="0.05:0.9", time=0.5, records=5),
}


class Recorded(tqdm.tqdm):
    bars: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "file": io.StringIO()})
        Recorded.bars.append(self)

    def close(self):
        if not self.disable and not getattr(self, "closed_at", None):
            self.closed_at = (self.n, self.total)
        super().close()


@pytest.mark.parametrize("name", CASES)
def test_one_bar_for_the_whole_run(name, tmp_path, monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    Recorded.bars = []
    get(name).run(out=tmp_path / "run", progress=True, **CASES[name])
    assert len(Recorded.bars) == 1, [b.desc for b in Recorded.bars]
    n, total = Recorded.bars[0].closed_at
    assert total > 0 and n == total
