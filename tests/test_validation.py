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
