"""No host synchronisation inside the run loops (and the alignment estimator), counted on the CPU.

On a GPU every read of a device value by the host (``.item()``, ``float(t)``, ``bool(t)``,
an output whose size depends on the data) stalls the stream until the device catches up.
Both simulators read their divergence test only every ``check_every`` steps; between reads
a step must not read anything. A ``TorchDispatchMode`` sees every ATen call that such a
read makes, on any device, so the CPU counts them: a run of 128 steps may make only a few
more reads than one of 64 (the divergence checks, every 64 steps), where one read a step
would make 64 more.
"""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dropdyn
from dropdyn.limits import simulate_limit
from dropdyn.sme_dynamics import DYNAMICS, simulate_sme

aten = torch.ops.aten
# calls whose result the host must wait for: a scalar read, or an output sized by the data
HOST_READS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.is_nonzero, aten.equal,
              aten.allclose, aten._unique2, aten.unique_consecutive, aten.unique_dim, aten.repeat_interleave}


class HostReads(TorchDispatchMode):
    """Counts the ATen calls that read device values on the host, by name."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func.overloadpacket in (aten.index, aten.index_put, aten.index_put_) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        if func.overloadpacket in HOST_READS or boolean_index:
            self.calls[func.overloadpacket.__name__ + (" (boolean index)" if boolean_index else "")] += 1
        return func(*args, **(kwargs or {}))


def reads(run, steps: int) -> Counter:
    with HostReads() as mode:
        run(steps)
    return mode.calls


def extra_reads(run) -> Counter:
    """Host reads that 64 more steps add (the two runs record at step 0 and at their end only)."""
    run(8)  # first calls (lazy imports, caches) out of the count
    return reads(run, 128) - reads(run, 64)


def problem(width=40, m=30, replicas=3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(replicas, width, 4, generator=g), torch.randn(m, 3, generator=g), torch.randn(m, generator=g))


@pytest.mark.parametrize("variant", dropdyn.VARIANTS)
def test_a_step_of_simulate_reads_nothing_on_the_host(variant):
    X, Z, y = problem()
    extra = extra_reads(lambda steps: dropdyn.simulate(variant, X, Z, y, lr=0.1, keep=0.6, steps=steps,
                                                       record_every=steps, seed=3, check_every=64))
    assert sum(extra.values()) <= 3, extra


# Not phase IV: each moving neuron's forward pass sums a Poisson number of random features,
# an output sized by the data (repeat_interleave), so its step reads the host (docs/engine.md).
@pytest.mark.parametrize("phase, settings", [("I", dict(h=0.1)), ("II", dict(h=0.1, beta=0.2)),
                                             ("III", dict(h=0.05, alpha=0.5)), ("V", dict(lr=0.1, keep=0.6))])
def test_a_step_of_a_limit_reads_nothing_on_the_host(phase, settings):
    X, Z, y = problem()
    h = settings.get("h", 0.1)  # V's step is its lr, 0.1
    extra = extra_reads(lambda steps: simulate_limit(phase, X, Z, y, time=steps * h, **settings, record_every=steps,
                                                     check_every=64))
    assert sum(extra.values()) <= 3, extra


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_a_step_of_simulate_sme_reads_nothing_on_the_host(dynamics):
    g = torch.Generator().manual_seed(0)
    theta, X, y = (torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g,
                   dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64))
    extra = extra_reads(lambda steps: simulate_sme(dynamics, theta, X, y, lr=0.05, keep=0.6, steps=steps, replicas=4,
                                                   record_every=steps, seed=1, check_every=64))
    assert sum(extra.values()) <= 3, extra


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "fused"])
@pytest.mark.parametrize("variant", ["dropout", "gd"])
def test_a_cuda_run_reads_the_host_only_at_its_checks(variant, backend):
    # the defaults on a GPU: the divergence test read every 16 steps, dropout uncompacted at
    # this size (engine.COMPACT_MIN_WORK); 64 more steps add 4 checks
    X, Z, y = (t.cuda() for t in problem(width=5000, m=1000, replicas=1))
    if backend == "fused":
        pytest.importorskip("triton")
    extra = extra_reads(lambda steps: dropdyn.simulate(variant, X, Z, y, lr=0.1, keep=0.6, steps=steps,
                                                       record_every=steps, seed=3, backend=backend))
    assert sum(extra.values()) <= 4 + 3, extra


def test_the_alignment_estimator_reads_the_host_once_per_call_not_per_sample():
    # each sample is K gradients and two Hessian passes: reads between them would stall a GPU
    from dropdyn.nets import DropoutMLP
    from dropdyn.noise_geometry import alignment

    torch.manual_seed(0)
    net, g = DropoutMLP([20, 30, 10], keep_hidden=0.5), torch.Generator().manual_seed(0)
    x, labels = torch.randn(50, 20, generator=g), torch.randint(0, 10, (50,), generator=g)
    count = [sum(reads(lambda s: alignment(net, torch.nn.functional.cross_entropy, x, labels, samples=s, seed=1),
                       s).values()) for s in (10, 40)]
    assert count[1] == count[0], count


def test_training_reads_the_host_once_per_step():
    # nets.train's divergence test (loss and gradients finite) is one read per SGD step
    from dropdyn.nets import DropoutMLP, train

    net, g = DropoutMLP([20, 30, 10], keep_hidden=0.5), torch.Generator().manual_seed(0)
    x, labels = torch.randn(80, 20, generator=g), torch.randint(0, 10, (80,), generator=g)
    count = [sum(reads(lambda n: train(net, x[:n], labels[:n], epochs=1, batch_size=10, max_norm=3.0), n).values())
             for n in (20, 80)]
    assert count[1] - count[0] == 6, count


def test_the_noise_comparison_reads_the_host_once_per_step():
    # appendix D's full-batch steps: one read a step (its divergence test over all gradients),
    # not one per parameter tensor and per chunk of images
    from tqdm import tqdm

    from dropdyn.experiments import alignment

    X, y = alignment.load_data(alignment.Config())
    X, y = X[:1000], y[:1000]  # ten chunks of 100 images a full-batch step

    def run(steps):
        cfg = alignment.Config(hidden=8, probes=2, noise_steps=steps, chunk=100)
        alignment.compare_noise(cfg, X, y, X[:50], y[:50], tqdm(disable=True))

    count = [sum(reads(run, steps).values()) for steps in (2, 6)]
    assert count[1] - count[0] == 4 * len(alignment.NOISES), count


def test_the_count_sees_a_read_per_step(monkeypatch):
    # the check itself can fail: dropout that compacts its kept neurons reads their count on
    # the host every step (engine.COMPACT_MIN_WORK), and the count sees it; so does a run
    # that reads its divergence test every step
    from dropdyn import engine

    X, Z, y = problem()
    monkeypatch.setitem(engine.COMPACT_MIN_WORK, "cpu", 0)
    compacted = extra_reads(lambda steps: dropdyn.simulate("dropout", X, Z, y, lr=0.1, keep=0.6, steps=steps,
                                                           record_every=steps, check_every=64))
    every_step = extra_reads(lambda steps: dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=1.0, steps=steps,
                                                            record_every=steps, check_every=1))
    assert sum(compacted.values()) >= 64 and sum(every_step.values()) >= 64, (compacted, every_step)
