"""The deep mean-field dropout step (``dropdyn.deep``) against the same network written as a
plain ``torch.nn`` module with autograd and per-layer SGD learning rates.

    python benchmarks/bench_deep.py [--layers 2,3 --width 500 --samples 50 --steps 20 --repeats 3]

Both take the step of docs/theory.md §6 on the teacher–student shapes (d = 5, tanh, squared
loss, float64, one replica): dropout with keep 0.5 on every hidden layer, the masks drawn
each step; the module's dropout is its own mask multiply, its learning rates τn, τn², τn.
Times per step are the median over ``--repeats`` of (time of 2·steps − time of steps)/steps.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from bench_wide import per_step  # this folder's: (time of 2·steps − time of steps)/steps, the median
from dropdyn import deep

LR, KEEP = 0.1, 0.5


class Plain(nn.Module):
    """The deep mean-field network as a user would write it: Linear layers without bias,
    tanh, a mask multiply, and the 1/n of each layer."""

    def __init__(self, net: deep.DeepNet):
        super().__init__()
        self.n = net.width
        self.first = nn.Parameter(net.first[0].clone())
        self.hidden = nn.ParameterList([nn.Parameter(w[0].clone()) for w in net.hidden])
        self.readout = nn.Parameter(net.readout[0].clone())

    def forward(self, z, masks):
        x = torch.tanh(z @ self.first.T) * masks[0] / KEEP
        for layer, W in enumerate(self.hidden):
            x = torch.tanh(x @ W.T / self.n) * masks[layer + 1] / KEEP
        return x @ self.readout / self.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="2,3")
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(args.samples, 5, generator=g, dtype=torch.float64)
    y = torch.randn(args.samples, generator=g, dtype=torch.float64)
    n = args.width
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64, width {n}, m = {args.samples}; "
          "ms per dropout step\n")
    print("| hidden layers | dropdyn.deep | torch.nn + autograd + SGD | ratio |")
    print("|---:|---:|---:|---:|")
    for L in (int(v) for v in args.layers.split(",")):
        net = deep.init(L, n, 5, generator=torch.Generator().manual_seed(L))
        ours = per_step(lambda k, net=net: deep.simulate("dropout", net, Z, y, lr=LR, keep=KEEP, steps=k),
                        args.steps, args.repeats)
        model = Plain(net)
        groups = [{"params": [model.first], "lr": LR * n}, {"params": list(model.hidden), "lr": LR * n * n},
                  {"params": [model.readout], "lr": LR * n}]
        opt = torch.optim.SGD(groups, lr=LR)

        def plain(k, model=model, opt=opt, L=L):
            for _ in range(k):
                masks = (torch.rand(L, n, dtype=torch.float64) < KEEP).to(torch.float64)
                opt.zero_grad(set_to_none=True)
                (0.5 * (model(Z, masks) - y) ** 2).mean().backward()
                opt.step()

        theirs = per_step(plain, args.steps, args.repeats)
        print(f"| {L} | {1e3 * ours:.2f} | {1e3 * theirs:.2f} | {theirs / ours:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
