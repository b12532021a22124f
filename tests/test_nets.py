"""Dropout networks: conventions, max-norm, Monte-Carlo inference."""

import math

import pytest
import torch

from dropdyn.nets import DropoutMLP, apply_max_norm, error_rate, train


def pair(p_in=0.8, p_h=0.5, activation="relu"):
    """An original-convention net and an inverted one with its dropped layers' weights × p."""
    torch.manual_seed(0)
    orig = DropoutMLP([6, 8, 7, 3], keep_input=p_in, keep_hidden=p_h, inverted=False, activation=activation).double()
    inv = DropoutMLP([6, 8, 7, 3], keep_input=p_in, keep_hidden=p_h, inverted=True, activation=activation).double()
    inv.load_state_dict(orig.state_dict())
    with torch.no_grad():
        for lin, p in zip(inv.linears(), (p_in, p_h, p_h), strict=True):
            lin.weight.mul_(p)
    return orig, inv


def test_conventions_give_the_same_test_time_function():
    orig, inv = pair()
    x = torch.randn(20, 6, dtype=torch.float64)
    orig.eval()
    inv.eval()
    torch.testing.assert_close(orig(x), inv(x))


def test_conventions_agree_under_the_same_training_masks():
    orig, inv = pair()
    x = torch.randn(20, 6, dtype=torch.float64)
    outs = []
    for net in (orig, inv):
        net.train()
        for d in net.dropouts():
            d.generator = torch.Generator().manual_seed(3)  # same draws in both
        outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1])


def test_max_norm_holds_after_every_step():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 10, generator=g), torch.randint(0, 3, (200,), generator=g)
    net = DropoutMLP([10, 32, 32, 3], keep_hidden=0.5)
    checks = []

    def check(_):
        checks.append(max(float(lin.weight.detach().norm(dim=1).max()) for lin in net.linears()[:-1]))

    train(net, x, y, epochs=3, lr=1.0, max_norm=0.7, batch_size=20, generator=g, on_step=check)
    assert len(checks) == 30 and max(checks) <= 0.7 + 1e-6
    free = DropoutMLP([10, 32, 32, 3], keep_hidden=0.5)
    train(free, x, y, epochs=3, lr=1.0, batch_size=20, generator=g)
    assert max(float(lin.weight.detach().norm(dim=1).max()) for lin in free.linears()[:-1]) > 0.7  # it binds
    apply_max_norm(net, 0.1)
    assert all(float(lin.weight.detach().norm(dim=1).max()) <= 0.1 + 1e-7 for lin in net.linears()[:-1])


def test_mc_average_converges_to_weight_scaling_for_linear_nets():
    """For a linear network E over masks of the output is the weight-scaled output, so
    the MC error falls like 1/sqrt(k)."""
    torch.manual_seed(1)
    net = DropoutMLP([5, 40, 2], keep_input=0.8, keep_hidden=0.5, activation="relu").double()
    net.net[2] = torch.nn.Identity()  # make it linear
    x = torch.randn(10, 5, dtype=torch.float64)
    net.eval()
    ws = net(x).detach()
    errs = [float((net.mc_predict(x, k, torch.Generator().manual_seed(k)) - ws).pow(2).mean().sqrt())
            for k in (10, 1000)]
    assert errs[1] < errs[0] / math.sqrt(100) * 3
    assert not net.training  # mode restored


def test_error_rate():
    assert error_rate(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0])) == 0.5


@pytest.mark.parametrize("kw, match", [
    (dict(keep_hidden=0.0), r"keep must be in \(0, 1\]"),
    (dict(keep_input=1.5), r"keep must be in \(0, 1\]"),
    (dict(keep_hidden=[0.5]), "keep_hidden needs 2 values"),
    (dict(activation="gelu"), "unknown activation 'gelu'"),
])
def test_bad_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        DropoutMLP([4, 5, 5, 2], **kw)


def test_bad_training_and_inference_input():
    net = DropoutMLP([4, 5, 2], keep_hidden=0.5)
    with pytest.raises(ValueError, match=r"k \(Monte-Carlo samples\) must be an integer >= 1, got 0"):
        net.mc_predict(torch.zeros(1, 4), 0)
    with pytest.raises(ValueError, match="max-norm c must be a finite positive number, got 0"):
        apply_max_norm(net, 0)
    with pytest.raises(ValueError, match="non-finite"):
        train(net, torch.full((4, 4), float("nan")), torch.zeros(4, dtype=torch.long), epochs=1)
