"""The phase paper's two workloads in their own settings, dropdyn against the same
computation written plainly in PyTorch with autograd (what a user would write instead).

    python benchmarks/bench_paper.py [--steps 1000 --sgd-steps 50 --repeats 3 --threads N
                                      --fig2-width 5000 --fig3-width 4000]

* ``Figure 2``: the teacher–student run (d = 20, 500 samples, ReLU, squared loss, width
  5000, τ = 0.5, q = 0.7, full batch): the four variants (GD, dropout, RaM, independent
  masks) of ``--steps`` steps each, recorded at their end, one ``simulate`` call each;
* ``Figure 3``: one MNIST SGD step (d = 784, batch 64, width 4000, logistic loss, τ = 0.25,
  q = 0.8, 2,000 samples), per variant (GD, dropout, RaM, forward-only, independent): the
  median over ``--repeats`` of the time of 2·``--sgd-steps`` steps less that of
  ``--sgd-steps``, per step (dropdyn's records of the full risk at a run's start and end are
  left out; the Figure 2 runs include theirs).

The plain version: a module with the first layer ``nn.Linear(d, n, bias=False)`` and the
readout ``a`` as ``nn.Parameter``, the 1/n-scaled output with the forward mask F in its
value and the backward mask B in its gradient (``F·φ.detach() + B·(φ − φ.detach())``), the
loss from ``torch.nn.functional``, ``backward()`` and ``torch.optim.SGD`` at learning rate
n·τ: the update of docs/theory.md §1, checked against dropdyn's on the first steps before
it is timed. Both sides draw their masks (and batches) each step. Prints a Markdown table;
a ratio > 1 means dropdyn is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dropdyn import simulate, threads
from dropdyn.data import mean_field_init, relu_teacher
from dropdyn.engine import BatchStream
from dropdyn.masks import MaskStream


class Plain(nn.Module):
    """A two-layer ReLU network in the mean-field scale, its forward mask F in the output's
    value and its backward mask B in the gradient."""

    def __init__(self, X0: torch.Tensor):
        super().__init__()
        d = X0.shape[1] - 1
        self.hidden = nn.Linear(d, X0.shape[0], bias=False)
        self.a = nn.Parameter(X0[:, 0].clone())
        with torch.no_grad():
            self.hidden.weight.copy_(X0[:, 1:])

    def forward(self, z: torch.Tensor, F: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        phi = torch.relu(self.hidden(z)) * self.a  # (m, n)
        return (F * phi.detach() + B * (phi - phi.detach())).mean(-1)

    def particles(self) -> torch.Tensor:
        return torch.cat([self.a.detach()[:, None], self.hidden.weight.detach()], 1)


def multipliers(variant: str, mask, mask2, keep: float, n: int, dtype):
    ones = torch.ones(n, dtype=dtype)
    M = ones if mask is None else mask.to(dtype) / keep
    M2 = ones if mask2 is None else mask2.to(dtype) / keep
    return {"gd": (ones, ones), "dropout": (M, M), "ram": (ones, M), "forward-only": (M, ones),
            "independent": (M2, M)}[variant]


def plain_run(variant: str, X0, Z, y, *, lr, keep, steps, loss, batch_size=None, seed=0):
    """``steps`` plain autograd steps; masks (and batches) drawn from dropdyn's streams, so the
    two runs are the same computation."""
    n = X0.shape[0]
    net = Plain(X0)
    opt = torch.optim.SGD(net.parameters(), lr=lr * n)
    masks = MaskStream(keep, (1, n), seed)
    forward = MaskStream(keep, (1, n), seed + 104_729)
    batches = BatchStream(Z.shape[0], (1, batch_size), seed + 1_299_709, "cpu") if batch_size else None
    lossf = {"squared": lambda f, t: 0.5 * nn.functional.mse_loss(f, t),
             "logistic": lambda f, t: nn.functional.binary_cross_entropy_with_logits(f, (t + 1) / 2)}[loss]
    for _ in range(steps):
        rows = batches.next()[0] if batches else slice(None)
        masked = variant != "gd"
        F, B = multipliers(variant, masks.next()[0] if masked else None,
                           forward.next()[0] if variant == "independent" else None, keep, n, X0.dtype)
        opt.zero_grad(set_to_none=True)
        lossf(net(Z[rows], F, B), y[rows]).backward()
        opt.step()
    return net.particles()


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def per_step(run, steps: int, repeats: int) -> float:
    """One step's time: the median over ``repeats`` of (time of 2·steps − time of steps)/steps,
    which leaves out what a run does once (dropdyn's records of the risk at its start and end)."""
    return statistics.median((timed(lambda: run(2 * steps))[0] - timed(lambda: run(steps))[0]) / steps
                             for _ in range(repeats))


def figure2(steps: int, check: int, width: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    task = relu_teacher(generator=g, dtype=torch.float32)
    X0 = mean_field_init(width, 20, generator=g, dtype=torch.float32)
    kw = dict(lr=0.5, keep=0.7, seed=1, loss="squared")
    for v in ("dropout", "independent"):  # the same computation
        ours = simulate(v, X0, task.inputs, task.targets, steps=check, activation="relu", record_every=check,
                        progress=False, **kw).particles
        theirs = plain_run(v, X0, task.inputs, task.targets, steps=check, **kw)
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4), (v, float((ours - theirs).abs().max()))
    variants = ("gd", "dropout", "ram", "independent")
    t_ours = sum(timed(lambda v=v: simulate(v, X0, task.inputs, task.targets, steps=steps, activation="relu",
                                              record_every=steps, progress=False, **kw))[0] for v in variants)
    t_plain = sum(timed(lambda v=v: plain_run(v, X0, task.inputs, task.targets, steps=steps, **kw))[0]
                  for v in variants)
    return [f"| Figure 2: four variants × {steps} steps, width {width}, d = 20, m = 500 (whole run) | "
            f"{t_ours:.2f} s | {t_plain:.2f} s | {t_plain / t_ours:.2f}× |"]


def figure3(steps: int, repeats: int, check: int, width: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    Z = torch.rand(2000, 784, generator=g)
    y = torch.randint(0, 2, (2000,), generator=g).float() * 2 - 1
    X0 = mean_field_init(width, 784, generator=g, dtype=torch.float32)
    kw = dict(lr=0.25, keep=0.8, seed=1, loss="logistic", batch_size=64)
    rows = []
    for v in ("gd", "dropout", "ram", "forward-only", "independent"):
        ours = simulate(v, X0, Z, y, steps=check, activation="relu", record_every=check, progress=False,
                        **kw).particles
        theirs = plain_run(v, X0, Z, y, steps=check, **kw)
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4), (v, float((ours - theirs).abs().max()))
        t_ours = per_step(lambda k, v=v: simulate(v, X0, Z, y, steps=k, activation="relu", record_every=k,
                                                  progress=False, **kw), steps, repeats)
        t_plain = per_step(lambda k, v=v: plain_run(v, X0, Z, y, steps=k, **kw), steps, repeats)
        rows.append(f"| Figure 3: one SGD step, {v}, width {width}, d = 784, batch 64 | {1e3 * t_ours:.1f} ms | "
                    f"{1e3 * t_plain:.1f} ms | {t_plain / t_ours:.2f}× |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="steps of each Figure 2 run (default 1000)")
    ap.add_argument("--sgd-steps", type=int, default=50, help="steps of each timed Figure 3 run (default 50)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: dropdyn's choice)")
    ap.add_argument("--fig2-width", type=int, default=5000)
    ap.add_argument("--fig3-width", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(threads.chosen() if args.threads is None else args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, CPU\n")
    print("| workload | dropdyn | plain torch.nn + autograd | ratio |")
    print("|---|---|---|---|")
    for line in (figure2(args.steps, 5, args.fig2_width) +
                 figure3(args.sgd_steps, args.repeats, 5, args.fig3_width)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
