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
    torch.manual_seed(0)
    free = DropoutMLP([10, 32, 32, 3], keep_hidden=0.5)  # without it, at a stable lr, rows grow to ≈ 2.3 > 0.7
    train(free, x, y, epochs=3, lr=0.3, batch_size=20, generator=torch.Generator().manual_seed(1))
    assert max(float(lin.weight.detach().norm(dim=1).max()) for lin in free.linears()[:-1]) > 1.4  # it binds
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
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0]])
    assert error_rate(logits, torch.tensor([0, 0, 0])) == pytest.approx(1 / 3)
    assert error_rate(logits, torch.tensor([0, 1, 0])) == 0.0


def test_layers_keep_rates_masks_and_activations_in_order():
    """The forward pass against one written out: the input mask at keep_input, hidden layer l's
    at keep_hidden[l] (drawn in that order, u < keep), the activation after every hidden Linear
    and none after the last; in eval mode the original convention scales by each keep."""
    torch.manual_seed(0)
    keeps = (0.8, 0.5, 0.7)
    x = torch.randn(9, 4, dtype=torch.float64)
    for inverted in (False, True):
        net = DropoutMLP([4, 6, 5, 3], keep_input=keeps[0], keep_hidden=keeps[1:], activation="tanh",
                         inverted=inverted).double()
        assert [d.keep for d in net.dropouts()] == list(keeps)
        L1, L2, L3 = net.linears()
        net.train()
        shared = torch.Generator().manual_seed(5)
        for d in net.dropouts():
            d.generator = shared
        g = torch.Generator().manual_seed(5)

        def drop(h, keep, g=g, inverted=inverted):
            mask = (torch.rand(h.shape, generator=g, dtype=h.dtype) < keep).double()
            return h * mask / keep if inverted else h * mask

        want = L3(drop(torch.tanh(L2(drop(torch.tanh(L1(drop(x, keeps[0]))), keeps[1]))), keeps[2]))
        torch.testing.assert_close(net(x), want, rtol=0, atol=1e-14)
        net.eval()
        s = (1.0, 1.0, 1.0) if inverted else keeps
        want = L3(s[2] * torch.tanh(L2(s[1] * torch.tanh(L1(s[0] * x)))))
        torch.testing.assert_close(net(x), want, rtol=0, atol=1e-14)
    # the smallest nets: no hidden layer (input dropout only), and layers of one unit
    assert DropoutMLP([4, 3], keep_input=0.8)(torch.zeros(2, 4)).shape == (2, 3)
    assert DropoutMLP([1, 1, 1], keep_hidden=0.5)(torch.zeros(2, 1)).shape == (2, 1)
    assert not DropoutMLP([4, 3]).dropouts()[0].keep < 1  # keep_input defaults to 1: no input dropout
    with pytest.raises(ValueError, match="an input and an output size"):
        DropoutMLP([4])


def test_mc_predict_averages_the_thinned_outputs_or_their_probabilities():
    torch.manual_seed(3)
    net = DropoutMLP([4, 6, 3], keep_input=0.8, keep_hidden=0.5).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    net.train()
    for probabilities in (False, True):
        g = torch.Generator().manual_seed(7)
        for d in net.dropouts():
            d.generator = g
        outs = torch.stack([net(x) for _ in range(6)])
        want = (outs.softmax(-1) if probabilities else outs).mean(0)
        got = net.mc_predict(x, 6, torch.Generator().manual_seed(7), probabilities=probabilities)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    torch.testing.assert_close(got.sum(-1), torch.ones(5, dtype=torch.float64))
    assert all(d.generator is None for d in net.dropouts()) and net.training  # released, mode restored


def test_max_norm_projects_only_the_rows_outside_the_ball():
    """A row with ‖w‖ > c becomes c·w/‖w‖ (same direction); a row inside is left as it is; the
    output layer is never touched."""
    torch.manual_seed(4)
    net = DropoutMLP([5, 6, 4, 3], keep_hidden=0.5).double()
    with torch.no_grad():
        for lin in net.linears():
            lin.weight.mul_(torch.linspace(0.1, 3.0, len(lin.weight), dtype=torch.float64)[:, None])
    before = [lin.weight.detach().clone() for lin in net.linears()]
    c = 1.0
    apply_max_norm(net, c)
    for lin, w in zip(net.linears()[:-1], before[:-1], strict=True):
        norms = w.norm(dim=1)
        assert bool((norms > c).any() and (norms < c).any())  # both kinds of row are present
        want = torch.where((norms > c)[:, None], c * w / norms[:, None], w)
        torch.testing.assert_close(lin.weight.detach(), want, rtol=0, atol=1e-15)
    assert torch.equal(net.linears()[-1].weight.detach(), before[-1])


def test_train_is_minibatch_sgd_with_momentum_and_decay_written_out():
    """train() with its defaults (lr 0.1, momentum 0.9, decay 0.98 an epoch, batches of 100)
    against the loop written out: a fresh permutation each epoch, v ← 0.9v + ∇ℓ, θ ← θ − lr·v,
    the masks and the permutations from the one generator; 250 examples give batches of 100,
    100 and 50. Zero epochs change nothing."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(250, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (250,), generator=g)
    torch.manual_seed(1)
    net = DropoutMLP([4, 8, 3], keep_hidden=0.5).double()
    ref = DropoutMLP([4, 8, 3], keep_hidden=0.5).double()
    ref.load_state_dict(net.state_dict())
    start = [p.detach().clone() for p in net.parameters()]
    assert train(net, x, y, epochs=0) is None
    assert all(torch.equal(p, s) for p, s in zip(net.parameters(), start, strict=True))
    steps, epochs = [], []
    out = train(net, x, y, epochs=2, generator=torch.Generator().manual_seed(3), on_step=steps.append,
                on_epoch=epochs.append)
    assert out is None and steps == [1, 2, 3, 4, 5, 6] and epochs == [0, 1]

    g = torch.Generator().manual_seed(3)
    for d in ref.dropouts():
        d.generator = g
    params = list(ref.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    lr = 0.1
    ref.train()
    for _ in range(2):
        perm = torch.randperm(250, generator=g)
        for s in range(0, 250, 100):
            idx = perm[s:s + 100]
            grads = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]), params)
            with torch.no_grad():
                for p, v, gr in zip(params, velocity, grads, strict=True):
                    v.mul_(0.9).add_(gr)
                    p.sub_(lr * v)
        lr *= 0.98
    for p, q in zip(net.parameters(), params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(keep_hidden=0.0), r"keep must be in \(0, 1\]"),
    (dict(keep_input=1.5), r"keep must be in \(0, 1\]"),
    (dict(keep_hidden=[0.5]), "keep_hidden needs 2 values"),
    (dict(activation="gelu"), "unknown activation 'gelu'"),
])
def test_bad_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        DropoutMLP([4, 5, 5, 2], **kw)


def test_all_finite_reads_the_gradients_as_well_as_the_loss():
    from dropdyn.nets import all_finite

    net = DropoutMLP([4, 5, 2])
    loss = torch.tensor(1.0)
    assert all_finite(net, loss)  # no gradient yet
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    assert all_finite(net, loss) and not all_finite(net, torch.tensor(float("inf")))
    net.linears()[1].bias.grad[0] = float("nan")
    assert not all_finite(net, loss)


def test_bad_training_and_inference_input():
    net = DropoutMLP([4, 5, 2], keep_hidden=0.5)
    with pytest.raises(ValueError, match=r"k \(Monte-Carlo samples\) must be an integer >= 1, got 0"):
        net.mc_predict(torch.zeros(1, 4), 0)
    with pytest.raises(ValueError, match="max-norm c must be a finite positive number, got 0"):
        apply_max_norm(net, 0)
    with pytest.raises(ValueError, match="non-finite"):
        train(net, torch.full((4, 4), float("nan")), torch.zeros(4, dtype=torch.long), epochs=1)


def test_vgg16_layout_parameters_and_training():
    """Dropout after the first two convolutions of each of the 5 blocks and after the first
    fully connected layer (11 layers, as in the SME paper's Fig. 3b); full width has the
    VGG16 parameter count for CIFAR (14.71 M convolutional + 0.53 M classifier, + 2 per
    batch-norm channel); a narrow one takes descent steps under train().

    The training check is a first-order property that rounding cannot flip: a small step
    along −∇ℓ lowers the train-mode loss under the same masks by ≈ ε‖∇ℓ‖² (asserted with a
    factor-2 margin). An 80-step loss ratio in eval mode went through batch-norm running
    statistics, and passed or failed with the CPU's SIMD path and thread count."""
    from dropdyn.nets import VGG16

    full = VGG16()  # keep 0.5 by default, as in the paper
    conv = sum(p.numel() for m in full.net if isinstance(m, torch.nn.Conv2d) for p in m.parameters())
    assert conv == 14_714_688
    assert sum(p.numel() for p in full.parameters()) == conv + 512 * 512 * 2 + 512 * 10 + 512 * 2 + 10 + 2 * 4224
    assert len(full.dropouts()) == 11 and all(d.keep == 0.5 for d in full.dropouts())
    plain = VGG16(0.5, batch_norm=False)
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * 4224
    # a learnable synthetic task: each class a smooth colour pattern plus noise
    g = torch.Generator().manual_seed(0)
    patterns = torch.nn.functional.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=32)
    y = torch.arange(64) % 10
    X = torch.randn(64, 3, 32, 32, generator=g) + patterns[y]
    torch.manual_seed(0)
    net = VGG16(0.9, width=1 / 16)
    assert [lin.out_features for lin in net.linears()] == [32, 32, 10]  # the classifier narrowed too
    thinnest = VGG16(width=1e-4)  # every layer rounds to at least one channel and one unit
    assert {m.out_channels for m in thinnest.net if isinstance(m, torch.nn.Conv2d)} == {1}
    assert [lin.out_features for lin in thinnest.linears()] == [1, 1, 10]
    params = list(net.parameters())

    def loss_under_masks(seed):
        net.train()
        for d in net.dropouts():
            d.generator = torch.Generator().manual_seed(seed)
        return torch.nn.functional.cross_entropy(net(X), y)

    for seed in (1, 2, 3):
        loss = loss_under_masks(seed)
        grads = torch.autograd.grad(loss, params)
        before = float(loss.detach())
        sq = float(sum((gr.double() ** 2).sum() for gr in grads))
        eps = 0.02 * before / sq  # a step that should lower the loss by about 2% (measured: 96–98% of ε‖∇ℓ‖²)
        with torch.no_grad():
            for p, gr in zip(params, grads, strict=True):
                p -= eps * gr
            after = float(loss_under_masks(seed))
        assert after < before - 0.5 * eps * sq, (before, after, eps * sq)
    # train() runs the same network end to end: finite, moved, generators released, eval mode
    start = [p.detach().clone() for p in params]
    train(net, X, y, epochs=3, lr=0.05, momentum=0.0, decay=1.0, batch_size=32,
          generator=torch.Generator().manual_seed(1))
    assert not net.training and all(d.generator is None for d in net.dropouts())
    assert all(bool(torch.isfinite(p).all()) for p in params)
    assert all(not torch.equal(p, s) for p, s in zip(params, start, strict=True) if p.dim() > 1)
    train(net, X, y, epochs=1, lr=0.05, batch_size=32, max_norm=0.5)  # max-norm on VGG16's hidden FC layers
    assert all(float(lin.weight.detach().norm(dim=1).max()) <= 0.5 + 1e-6 for lin in net.linears()[:-1])
    with pytest.raises(ValueError, match=r"images of shape \(N, 3, 32, 32\), got \(2, 784\)"):
        net(torch.randn(2, 784))
    with pytest.raises(ValueError, match=r"got \(2, 1, 28, 28\)"):
        net(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="keep"):
        VGG16(1.5)


def test_cifar10_loader(tmp_path):
    from dropdyn.data import cifar10
    from test_experiments_small import fake_cifar

    folder = fake_cifar(tmp_path, per_batch=4)
    X, y = cifar10(str(folder))
    assert X.shape == (20, 3, 32, 32) and X.dtype == torch.float32 and 0 <= float(X.min()) <= float(X.max()) <= 1
    Xt, yt = cifar10(str(folder / "cifar-10-batches-py"), train=False)
    assert Xt.shape == (4, 3, 32, 32) and yt.shape == (4,)
    with pytest.raises(ValueError, match="cifar.html"):
        cifar10("")
