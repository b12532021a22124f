"""``simulate(..., graph=True)``: the steps that are not recorded replayed as one CUDA graph.

Without a GPU, the graph is replaced by a stand-in that calls the captured body and checks,
under a ``TorchDispatchMode``, that it reads nothing on the host and makes no tensor from
host data (a capture refuses both): so the CPU checks that a graphed run is the same run, bit
for bit, and that its body could be captured. The CUDA tests capture and replay for real.
"""

import pytest
import torch

import dropdyn
from dropdyn import InputError, graph
from dropdyn.engine import Rule
from dropdyn.masks import draw_masks
from test_host_reads import HostReads

aten = torch.ops.aten


class Uncapturable(HostReads):
    """Counts what a CUDA graph capture refuses: host reads, and tensors made from host data
    (``torch.tensor`` inside a step, a copy to the device)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (aten.lift_fresh, aten.lift_fresh_copy):
            self.calls[func.overloadpacket.__name__] += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


class StandIn:
    """:class:`dropdyn.graph.StepGraph` on the CPU: calls the body, which must do nothing a
    capture refuses; counts the replays."""

    calls = 0

    def __init__(self, body, generators=()):
        self.body, self.generators = body, generators

    def __call__(self):
        with Uncapturable() as mode:
            self.body()
        assert not mode.calls, mode.calls
        StandIn.calls += 1


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(graph, "check_graph", lambda device: None)
    monkeypatch.setattr(graph, "StepGraph", StandIn)
    StandIn.calls = 0
    return StandIn


def problem(R=2, n=60, m=25, d=3, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(R, n, d + 1 + bias, generator=g, dtype=torch.float64),
            torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, generator=g, dtype=torch.float64))


def same_run(a, b):
    for name in ("particles", "steps", "risk", "test_risk", "outputs", "snapshots", "snapshot_steps"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), name
    assert a.diverged_at_step == b.diverged_at_step
    assert {k: v for k, v in a.info.items() if k != "graph"} == {k: v for k, v in b.info.items() if k != "graph"}


@pytest.mark.parametrize("check_every", [None, 1, 5])
@pytest.mark.parametrize("variant", dropdyn.VARIANTS)
def test_a_graphed_run_is_the_same_run(stand_in, variant, check_every):
    X, Z, y = problem()
    kw = dict(lr=0.4, keep=0.6, steps=23, seed=4, record_every=6, snapshot_every=10, check_every=check_every,
              test_inputs=Z[:7] + 0.5, test_targets=y[:7], probe_inputs=Z[:3])
    plain, graphed = (dropdyn.simulate(variant, X, Z, y, graph=g, **kw) for g in (False, True))
    same_run(plain, graphed)
    assert graphed.info["graph"] and not plain.info["graph"]
    # recorded steps (6, 12, 18, 23), snapshot steps (10, 20) and step 1 run eagerly; the others replay
    assert stand_in.calls == 23 - 4 - 2 - 1


def test_given_masks_are_picked_by_the_step_counted_on_the_device(stand_in):
    X, Z, y = problem()
    for masks in (draw_masks(0.5, 30, (60,), seed=9), draw_masks(0.5, 30, (2, 60), seed=9)):
        plain, graphed = (dropdyn.simulate("dropout", X, Z, y, lr=0.3, keep=0.5, steps=30, masks=masks,
                                           record_every=30, graph=g) for g in (False, True))
        same_run(plain, graphed)
        assert stand_in.calls > 0


def test_a_given_generator_is_the_stream_a_graphed_run_draws_from(stand_in):
    X, Z, y = problem()
    runs = [dropdyn.simulate("ram", X, Z, y, lr=0.3, keep=0.5, steps=12, record_every=12, graph=g,
                             generator=torch.Generator().manual_seed(5)) for g in (False, True)]
    same_run(*runs)


@pytest.mark.parametrize("check_every", [1, 4])
@pytest.mark.parametrize("lr, record_every", [(40.0, 100), (4.0, 6), (3.0, 7), (3.0, 100)])
def test_a_graphed_run_stops_at_the_same_divergence(stand_in, lr, record_every, check_every):
    # diverging at steps 4, 15 and 37: found on the device in replayed steps, read at the next check
    X, Z, y = problem(n=30)
    kw = dict(lr=lr, keep=0.5, steps=60, seed=2, record_every=record_every, check_every=check_every,
              divergence_threshold=50.0)
    plain, graphed = (dropdyn.simulate("dropout", X, Z, y, graph=g, **kw) for g in (False, True))
    assert plain.diverged_at_step is not None
    same_run(plain, graphed)


def test_graph_is_refused_where_it_cannot_run():
    X, Z, y = problem()
    with pytest.raises(InputError, match="needs a CUDA device, not 'cpu'"):
        dropdyn.simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=2, graph=True)
    with pytest.raises(InputError, match="graph must be True or False, got 'yes'"):
        dropdyn.simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=2, graph="yes")


def test_graph_refuses_the_critical_rule(stand_in):
    X, Z, y = problem()
    with pytest.raises(InputError, match="critical rule"):
        dropdyn.simulate(Rule(True, True, beta=0.5), X, Z, y, lr=0.1, keep=0.5, steps=2, graph=True)


def test_a_graphed_run_leaves_the_given_particles_alone(stand_in):
    # the run updates its state in place: never the caller's tensor, even where a view would be
    X, Z, y = problem(R=1, n=1)
    before = X.clone()
    dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=1.0, steps=5, record_every=5, graph=True)
    assert torch.equal(X, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "fused"])
@pytest.mark.parametrize("masks", ["drawn", "given"])
@pytest.mark.parametrize("variant", ["dropout", "ram", "penalty", "gd"])
def test_a_cuda_graph_replays_the_same_run(variant, masks, backend):
    if backend == "fused":
        pytest.importorskip("triton")
    X, Z, y = (t.cuda().float() for t in problem(R=1, n=5000, m=1000, d=10, bias=False))
    kw = dict(lr=0.1, keep=0.6, steps=40, record_every=13, check_every=8, backend=backend)
    if masks == "given":
        kw["masks"] = draw_masks(0.6, 40, (5000,), seed=3, device="cuda")
    else:
        kw["seed"] = 3
    plain, graphed = (dropdyn.simulate(variant, X, Z, y, graph=g, **kw) for g in (False, True))
    same_run(plain, graphed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_graph_stops_at_the_same_divergence():
    X, Z, y = (t.cuda() for t in problem(n=30))
    kw = dict(lr=40.0, keep=0.5, steps=60, seed=2, record_every=100, check_every=4, divergence_threshold=50.0)
    plain, graphed = (dropdyn.simulate("dropout", X, Z, y, graph=g, **kw) for g in (False, True))
    assert plain.diverged_at_step is not None
    same_run(plain, graphed)


def test_a_graphed_fused_run_is_the_same_run(stand_in):
    pytest.importorskip("triton")  # conftest.py has set TRITON_INTERPRET=1 where there is no GPU
    X, Z, y = problem(n=70, m=30)
    kw = dict(lr=0.3, keep=0.5, steps=6, seed=2, record_every=6, backend="fused")
    for variant in ("dropout", "penalty"):
        same_run(*(dropdyn.simulate(variant, X, Z, y, graph=g, **kw) for g in (False, True)))
    assert stand_in.calls == 2 * 4
