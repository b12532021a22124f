"""Bad input: a ValueError naming the argument and the value."""

import pytest
import torch

from dropdyn import simulate


@pytest.fixture
def ok(small_problem):
    X, Z, y = small_problem
    return dict(variant="dropout", particles=X, inputs=Z, targets=y, lr=0.1, keep=0.5, steps=3)


def call(ok, **kw):
    args = {**ok, **kw}
    variant, X, Z, y = (args.pop(k) for k in ("variant", "particles", "inputs", "targets"))
    return simulate(variant, X, Z, y, **args)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(keep=0.0), r"keep must be in \(0, 1\], got 0.0"),
        (dict(keep=1.2), r"keep must be in \(0, 1\], got 1.2"),
        (dict(keep=-1), r"keep .* got -1"),
        (dict(keep=float("nan")), r"keep .* got nan"),
        (dict(lr=0.0), r"lr must be a finite positive number, got 0.0"),
        (dict(lr=-1.0), r"lr .* got -1.0"),
        (dict(lr=float("inf")), r"lr .* got inf"),
        (dict(lr=float("nan")), r"lr .* got nan"),
        (dict(steps=-1), r"steps must be an integer >= 0, got -1"),
        (dict(steps=2.5), r"steps .* got 2.5"),
        (dict(record_every=0), r"record_every .* got 0"),
        (dict(variant="sgd"), r"unknown variant 'sgd'"),
        (dict(activation="swish"), r"unknown activation 'swish'"),
    ],
)
def test_bad_scalars(ok, kw, match):
    with pytest.raises(ValueError, match=match):
        call(ok, **kw)


def test_width_zero(ok):
    with pytest.raises(ValueError, match=r"width .* >= 1"):
        call(ok, particles=torch.zeros(0, 4, dtype=torch.float64))


def test_mismatched_shapes(ok):
    X, Z, y = ok["particles"], ok["inputs"], ok["targets"]
    with pytest.raises(ValueError, match=r"targets must have shape \(5,\).*got \(4,\)"):
        call(ok, targets=y[:4])
    with pytest.raises(ValueError, match=r"p=6 coordinates but inputs have d=3"):
        call(ok, particles=torch.zeros(7, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"inputs must have shape \(n_samples, d\)"):
        call(ok, inputs=Z[0])
    with pytest.raises(ValueError, match=r"particles must have shape"):
        call(ok, particles=X[None, None])


@pytest.mark.parametrize("which", ["particles", "inputs", "targets"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_data(ok, which, bad):
    t = ok[which].clone()
    t.view(-1)[0] = bad
    with pytest.raises(ValueError, match=rf"{which} contains 1 non-finite value"):
        call(ok, **{which: t})


def test_bad_masks(ok):
    with pytest.raises(ValueError, match=r"masks must be a bool tensor.*got torch.float32"):
        call(ok, masks=torch.ones(3, 7))
    with pytest.raises(ValueError, match=r"masks must have shape \(3, 7\), got \(2, 7\)"):
        call(ok, masks=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks must have shape"):
        call(ok, masks=torch.ones(3, 6, dtype=torch.bool))


def test_test_data_must_come_in_pairs(ok):
    with pytest.raises(ValueError, match="test_inputs and test_targets"):
        call(ok, test_inputs=ok["inputs"])


@pytest.mark.parametrize("bias", [False, True])
def test_the_smallest_valid_problems_run(bias):
    """The boundary's other side: width 1, one sample, d = 1, keep = 1 and a tiny lr are
    accepted by every simulator, and zero steps return the initial state."""
    from dropdyn.limits import simulate_limit
    from dropdyn.sme_dynamics import simulate_sme

    X = torch.tensor([[0.5, -1.0] + [0.3] * bias], dtype=torch.float64)
    Z, y = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    for variant in ("dropout", "ram", "gd"):
        res = simulate(variant, X, Z, y, lr=1e-300, keep=1.0, steps=2)
        assert res.diverged_at_step is None and res.particles.shape == X.shape
    assert torch.equal(simulate("dropout", X, Z, y, lr=0.1, keep=0.5, steps=0).particles, X)
    assert simulate_limit("IV", X, Z, y, time=0.1, h=0.1, alpha=1.0, beta=1.0).particles.shape == X.shape
    if not bias:  # the SME's θ has no bias coordinate
        tr = simulate_sme("sme2", X, Z, y, lr=0.1, keep=0.5, steps=1, replicas=1)
        assert tr.diverged_at_step is None and tr.particles.shape == (1, *X.shape)


def test_the_boundary_checks_at_their_edges():
    """The checks in ``_checks`` directly, on either side of each edge they draw."""
    import os
    import re

    from dropdyn import _checks as c

    assert c.shown([1.5, "a"]) == "[1.5, 'a']"  # short values as they are
    long = c.shown("x" * 1000)
    assert len(long) == 80 and long.startswith("'xxx") and "..." in long  # a long string cut inside, to 80
    nested = c.shown([[[[1]]]])
    assert nested == "[[[...]]]"  # two levels shown
    many = c.shown({f"key{i}": "v" * 70 for i in range(40)})
    assert len(many) == 200 and many.endswith("…")  # at most 200 characters in all
    assert c.check_positive("lr", torch.tensor(0.5)) == 0.5  # a one-element tensor is a number
    for bad in (torch.tensor([0.5, 0.5]), True, 1j):
        with pytest.raises(ValueError, match="lr must be a finite positive number"):
            c.check_positive("lr", bad)
    assert c.check_seed(2**63 - 1) == 2**63 - 1
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^63\)"):
        c.check_seed(2**63)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    c.check_memory("a run", ram)  # exactly the machine's memory passes
    with pytest.raises(ValueError, match=re.escape(f"a run needs about {3 * ram / 2**30:.3g} GiB, more than the "
                                                   f"{ram / 2**30:.3g} GiB of memory on this machine")):
        c.check_memory("a run", 3 * ram)
    assert c.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'meta'"):
        c.check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            c.check_device("cuda")
    assert c.check_widths("widths", (5, 2, 5)) == [2, 5]
    for bad, match in (((5, 5), "two distinct widths"), ((1, 5), "widths must be an integer >= 2, got 1")):
        with pytest.raises(ValueError, match=match):
            c.check_widths("widths", bad)
    assert c.check_interval("momentum", 0, "[0, 1)") == 0.0
    for bad in (1, float("nan"), True, "x"):
        with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
            c.check_interval("momentum", bad, "[0, 1)")


def test_memory_is_checked_against_the_device_it_is_for(monkeypatch):
    """A CUDA size is measured against the GPU's memory, a CPU size against RAM (a fake GPU
    of 1 GiB, so that this runs on any machine)."""
    import types

    from dropdyn import _checks as c

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=2**30))
    with pytest.raises(ValueError, match="a run needs about 2 GiB, more than the 1 GiB of GPU memory"):
        c.check_memory("a run", 2**31, "cuda")
    c.check_memory("a run", 2**31, "cpu")  # the machines that run this have more than 2 GiB of RAM

