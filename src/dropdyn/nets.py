"""Dropout networks as practised (docs/theory.md §5, Srivastava et al. 2014).

A multilayer perceptron built from ``torch.nn`` with Bernoulli(keep) masks on its inputs
and on each hidden layer, each at its own keep rate, in either convention:

* ``inverted=True``: train with multipliers mask/p, do nothing at test time;
* ``inverted=False`` (the paper's): train with {0, 1} masks, and at test time scale the
  outgoing weights of every dropped layer by p — done here by multiplying that layer's
  activations by p, which is the same function (W (p h) = (p W) h).

Inference by weight scaling (``model.eval()``) or by Monte-Carlo averaging over k thinned
networks (:meth:`DropoutMLP.mc_predict`); max-norm projection of each unit's incoming
weight vector (:func:`apply_max_norm`); SGD with momentum and a decaying learning rate
(:func:`train`). :class:`VGG16` is the convolutional network of the SME paper's
Figure 3(b), with the same dropout layers, so that :func:`train` and the alignment
diagnostics take it as they take an MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import InputError, check_int, check_interval, check_keep, check_memory, check_positive

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class Dropout(nn.Module):
    """Bernoulli(keep) masks in either convention (see the module docstring). A given
    ``generator`` makes the masks replayable."""

    def __init__(self, keep: float, inverted: bool = True):
        super().__init__()
        self.keep = check_keep(keep)
        self.inverted = inverted
        self.generator: torch.Generator | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.keep == 1.0:
            return h
        if not self.training:
            return h if self.inverted else h * self.keep
        g = self.generator  # masks come from the generator's device (a CPU generator: same masks on any device)
        u = torch.rand(h.shape, generator=g, device=g.device if g is not None else h.device, dtype=h.dtype)
        mask = (u < self.keep).to(device=h.device, dtype=h.dtype)
        return h * mask / self.keep if self.inverted else h * mask


class _DropoutNet(nn.Module):
    """A network whose layers are the ``nn.Sequential`` ``self.net``."""

    net: nn.Sequential

    def dropouts(self) -> list[Dropout]:
        return [m for m in self.net if isinstance(m, Dropout)]

    def linears(self) -> list[nn.Linear]:
        """The fully connected layers, in order (max-norm constrains all but the last)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]


class DropoutMLP(_DropoutNet):
    """``sizes = [d_in, h_1, …, d_out]``; dropout before every linear layer: on the input
    with ``keep_input``, on hidden layer l with ``keep_hidden[l]`` (one number = all)."""

    def __init__(self, sizes: Sequence[int], *, keep_input: float = 1.0, keep_hidden: float | Sequence[float] = 1.0,
                 activation: str = "relu", inverted: bool = True):
        super().__init__()
        sizes = [check_int("layer size", s, 1) for s in sizes]
        if len(sizes) < 2:
            raise InputError(f"sizes needs an input and an output size, got {list(sizes)}")
        weights = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        check_memory(f"a network of {weights:,} parameters", 4 * weights)  # float32, before any is allocated
        n_hidden = len(sizes) - 2
        keeps = [keep_hidden] * n_hidden if isinstance(keep_hidden, (int, float)) else list(keep_hidden)
        if len(keeps) != n_hidden:
            raise InputError(f"keep_hidden needs {n_hidden} values (one per hidden layer), got {len(keeps)}")
        if activation not in ACTS:
            raise InputError(f"unknown activation {activation!r}; choose one of {', '.join(sorted(ACTS))}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(Dropout(keep_input if i == 0 else keeps[i - 1], inverted))
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(ACTS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def mc_predict(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                   probabilities: bool = False) -> torch.Tensor:
        """Average over ``k`` sampled thinned networks (training-mode masks) of the outputs,
        or of their softmax with ``probabilities``; the model's mode is restored afterwards."""
        k = check_int("k (Monte-Carlo samples)", k, 1)
        was = self.training
        self.train()
        for d in self.dropouts():
            d.generator = generator
        try:
            outs = [self(x) for _ in range(k)]
            if probabilities:
                outs = [o.softmax(-1) for o in outs]
            return torch.stack(outs).mean(0)
        finally:
            for d in self.dropouts():
                d.generator = None
            self.train(was)


class VGG16(_DropoutNet):
    """VGG16 for 3 × 32 × 32 images (CIFAR-10), as in the SME paper's Figure 3(b):
    five blocks of 3×3 convolutions (+ batch norm) + ReLU with (64, 64), (128, 128),
    (256, 256, 256), (512, 512, 512), (512, 512, 512) channels, each block ending in 2×2
    max-pooling; dropout at ``keep`` after the first two convolutions of every block and
    after the first fully connected layer of the classifier 512 → 512 → 512 → ``classes``;
    He-normal initialisation. ``width`` scales every channel count (and the classifier):
    ``width=1`` is VGG16 (≈ 15.2 M parameters); small widths give a cheap network of the
    same shape.

    ``batch_norm=True`` (default) is the VGG16 usually trained on CIFAR-10; without it the
    16-layer network stalls at chance from scratch (measured on a synthetic task). Batch
    statistics make the loss of a batch depend on the whole batch, which the alignment
    measures as it is (``dropdyn.noise_geometry`` restores the running statistics after its
    forward passes). Written out here rather than taken from torchvision, whose VGG16 is
    the 224 × 224 ImageNet network with 4096-unit classifier layers and no dropout in its
    convolutional part."""

    BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

    def __init__(self, keep: float = 0.5, classes: int = 10, *, width: float = 1.0, batch_norm: bool = True,
                 inverted: bool = True):
        super().__init__()
        keep = check_keep(keep)
        classes = check_int("classes", classes, 1)
        width = check_positive("width", width)
        layers: list[nn.Module] = []
        c_in = 3
        for block in self.BLOCKS:
            for i, c in enumerate(block):
                c = max(1, round(c * width))
                layers += [nn.Conv2d(c_in, c, 3, padding=1), *([nn.BatchNorm2d(c)] if batch_norm else []), nn.ReLU()]
                if i < 2:
                    layers.append(Dropout(keep, inverted))
                c_in = c
            layers.append(nn.MaxPool2d(2))
        hidden = max(1, round(512 * width))
        layers += [nn.Flatten(), nn.Linear(c_in, hidden), nn.ReLU(), Dropout(keep, inverted),
                   nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 3, 32, 32) → logits (N, classes)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise InputError(f"VGG16 takes images of shape (N, 3, 32, 32), got {tuple(x.shape)}")
        return self.net(x)


@torch.no_grad()
def apply_max_norm(model: DropoutMLP | VGG16, c: float) -> None:
    """Project each hidden unit's incoming weight vector (a row of every ``Linear`` of
    ``model.linears()`` but the last) onto the ball ‖w‖ ≤ c. The output layer is left free;
    for VGG16 these are its two hidden fully connected layers (convolutions are not
    constrained)."""
    c = check_positive("max-norm c", c)
    for lin in model.linears()[:-1]:
        norms = lin.weight.norm(dim=1, keepdim=True)
        lin.weight.mul_(torch.clamp(c / norms.clamp_min(1e-30), max=1.0))


def check_labels(model: DropoutMLP | VGG16, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    """Class labels: integers, one per input, each in [0, classes) of ``model``'s last layer."""
    if not isinstance(labels, torch.Tensor) or labels.dtype in (torch.bool,) or labels.is_floating_point() \
            or labels.is_complex():
        raise InputError(f"labels must be an integer tensor of classes, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (len(inputs),):
        raise InputError(f"labels must have shape ({len(inputs)},), one per input, got {tuple(labels.shape)}")
    classes = model.linears()[-1].out_features
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        raise InputError(f"labels must be classes in [0, {classes}), got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")


def train(model: DropoutMLP | VGG16, inputs: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float = 0.1,
          momentum: float = 0.9, decay: float = 0.98, batch_size: int = 100, max_norm: float | None = None,
          generator: torch.Generator | None = None, on_epoch=None, on_step=None) -> int | None:
    """Minibatch SGD with momentum on cross-entropy; the learning rate is multiplied by
    ``decay`` after every epoch; max-norm projection after every step if ``max_norm``.
    ``on_epoch(epoch)`` is called after each epoch (for curves), ``on_step(step)`` after
    each step (after the projection).

    Returns None, or the step (counted from 1) whose minibatch loss or gradient was
    non-finite: training stops there, before that step's update, and the model keeps the
    parameters that produced it (a diverged run is a result, not an error)."""
    check_int("epochs", epochs, 0)
    check_positive("lr", lr)
    check_int("batch_size", batch_size, 1)
    check_interval("momentum", momentum, "[0, 1)")
    check_interval("decay", decay, "(0, 1]")
    if max_norm is not None:
        check_positive("max-norm c", max_norm)
    if not bool(torch.isfinite(inputs).all()):
        raise InputError("inputs contain non-finite values (NaN or inf)")
    check_labels(model, inputs, labels)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=decay)
    for d in model.dropouts():
        d.generator = generator
    n, k, diverged = len(inputs), 0, None
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu")
        perm = perm.to(inputs.device)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(inputs[idx]), labels[idx])
            loss.backward()
            if not all_finite(model, loss):
                diverged = k + 1
                break
            opt.step()
            if max_norm is not None:
                apply_max_norm(model, max_norm)
            k += 1
            if on_step is not None:
                on_step(k)
        if diverged is not None:
            break
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch)
    for d in model.dropouts():
        d.generator = None
    model.eval()
    return diverged


def all_finite(model: nn.Module, *tensors: torch.Tensor) -> bool:
    """Every gradient of ``model`` and every entry of ``tensors`` (a loss) finite, in one
    device-to-host read (a read per parameter would stall a GPU's queue that many times)."""
    checks = [torch.isfinite(t).all() for t in tensors]
    checks += [torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


@torch.no_grad()
def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of misclassified examples."""
    return float((logits.argmax(-1) != labels).double().mean())
