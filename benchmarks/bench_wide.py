"""Wide inputs: a mean-field ReLU network at MNIST's shapes (d = 784, float32), one step of
each variant, dropdyn against a ``jax.jit``-compiled JAX step of the same update (as the
phase paper's authors write theirs) and a plain ``torch.nn`` + autograd step.

    python benchmarks/bench_wide.py [--widths 1000,4000 --batches 64,1000 --steps 20 --repeats 3]

The update is docs/theory.md §1's, on the logistic loss: X ← X − τ n ∇_X mean_j ℓ(f(z_j), y_j),
f's value taken with the forward mask F and its gradient with the backward mask B (dropout
F = B = M/q, RaM F = 1, B = M/q, forward-only F = M/q, B = 1, GD F = B = 1), q = 0.8,
τ = 0.25, B samples a step. Each side draws its own masks and batches each step. Times per
step are the median over ``--repeats`` of (time of 2·steps − time of steps)/steps, which
leaves out what a run does once (compilation, dropdyn's records). JAX is optional (a
benchmark dependency: ``pip install jax``); without it its column says so.

Also: the machine's GEMM rate at the step's shapes (``torch.mm`` of (n × d)·(d × B), the
forward product), and the rate the dropdyn step achieves on its two GEMMs of 2·n·d·B flops
each (for dropout, on the kept neurons: q·n). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dropdyn import simulate, threads

VARIANTS = ("gd", "dropout", "ram", "forward-only")
LR, KEEP = 0.25, 0.8


def per_step(run, steps: int, repeats: int) -> float:
    def timed(k):
        t0 = time.perf_counter()
        run(k)
        return time.perf_counter() - t0

    timed(2)  # compile, warm the allocator
    return statistics.median((timed(2 * steps) - timed(steps)) / steps for _ in range(repeats))


def jax_runner(X0, Z, y, variant: str, batch: int):
    """``k ↦`` k jit-compiled JAX steps from X0 (None without JAX)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    n, m = X0.shape[0], Z.shape[0]
    Zj, yj = jnp.asarray(Z.numpy()), jnp.asarray(y.numpy())

    def loss(X, z, t, F, B):
        phi = jax.nn.relu(z @ X[:, 1:].T) * X[:, 0]  # (b, n)
        f = jnp.mean(F * jax.lax.stop_gradient(phi) + B * (phi - jax.lax.stop_gradient(phi)), -1)
        return jnp.mean(jax.nn.softplus(-t * f))

    @jax.jit
    def step(X, key):
        k1, k2 = jax.random.split(key)
        rows = jax.random.choice(k1, m, (batch,), replace=False) if batch < m else jnp.arange(m)
        M = jax.random.bernoulli(k2, KEEP, (n,)).astype(X.dtype) / KEEP
        one = jnp.ones(n, X.dtype)
        F, B = {"gd": (one, one), "dropout": (M, M), "ram": (one, M), "forward-only": (M, one)}[variant]
        return X - LR * n * jax.grad(loss)(X, Zj[rows], yj[rows], F, B)

    def run(k):
        X, key = jnp.asarray(X0.numpy()), jax.random.PRNGKey(0)
        for _ in range(k):
            key, sub = jax.random.split(key)
            X = step(X, sub)
        X.block_until_ready()

    return run


def plain_runner(X0, Z, y, variant: str, batch: int):
    """``k ↦`` k steps of an ``nn.Linear`` + readout module with autograd and SGD."""
    n, m = X0.shape[0], Z.shape[0]
    net = torch.nn.Linear(Z.shape[1], n, bias=False)
    a = torch.nn.Parameter(X0[:, 0].clone())
    with torch.no_grad():
        net.weight.copy_(X0[:, 1:])
    opt = torch.optim.SGD([net.weight, a], lr=LR * n)
    one = torch.ones(n)

    def run(k):
        for _ in range(k):
            rows = torch.randperm(m)[:batch] if batch < m else slice(None)
            M = (torch.rand(n) < KEEP).float() / KEEP
            F, B = {"gd": (one, one), "dropout": (M, M), "ram": (one, M), "forward-only": (M, one)}[variant]
            phi = torch.relu(net(Z[rows])) * a
            f = (F * phi.detach() + B * (phi - phi.detach())).mean(-1)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.softplus(-y[rows] * f).mean().backward()
            opt.step()

    return run


def gemm_rate(n: int, d: int, batch: int, repeats: int) -> float:
    """GFLOP/s of ``torch.mm`` at the forward product's shapes, (n × d)·(d × B)."""
    W, Zt = torch.randn(n, d), torch.randn(d, batch)
    t = per_step(lambda k: [W @ Zt for _ in range(k)], 20, repeats)
    return 2 * n * d * batch / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="1000,4000")
    ap.add_argument("--batches", default="64,1000")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(threads.chosen() if args.threads is None else args.threads)
    g = torch.Generator().manual_seed(0)
    Z = torch.rand(2000, 784, generator=g)
    y = torch.randint(0, 2, (2000,), generator=g).float() * 2 - 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, CPU; ms per step\n")
    print("| width | batch | variant | dropdyn | JAX jit | torch.nn + autograd | vs JAX | vs torch.nn | GEMM peak, "
          "GFLOP/s | dropdyn's GEMMs, GFLOP/s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(float(w)) for w in args.widths.split(",")):
        X0 = torch.cat([torch.randn(n, 1, generator=g), torch.randn(n, 784, generator=g) / 28.0], 1)
        for batch in (int(b) for b in args.batches.split(",")):
            peak = gemm_rate(n, 784, batch, args.repeats)
            for v in VARIANTS:
                ours = per_step(lambda k, v=v, X0=X0, batch=batch: simulate(
                    v, X0, Z, y, lr=LR, keep=KEEP, steps=k, loss="logistic", activation="relu", batch_size=batch,
                    record_every=k, progress=False), args.steps, args.repeats)
                jrun = jax_runner(X0, Z, y, v, batch)
                theirs = per_step(jrun, args.steps, args.repeats) if jrun else None
                plain = per_step(plain_runner(X0, Z, y, v, batch), args.steps, args.repeats)
                kept = KEEP if v == "dropout" else 1.0
                achieved = 2 * 2 * kept * n * 784 * batch / ours / 1e9
                jax_cells = f"{1e3 * theirs:.2f} | {theirs / ours:.2f}×" if theirs else "no JAX | —"
                print(f"| {n} | {batch} | {v} | {1e3 * ours:.2f} | {jax_cells.split(' | ')[0]} | {1e3 * plain:.2f} | "
                      f"{jax_cells.split(' | ')[1]} | {plain / ours:.2f}× | {peak:.0f} | {achieved:.0f} |", flush=True)


if __name__ == "__main__":
    main()
