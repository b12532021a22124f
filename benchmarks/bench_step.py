"""One dropout step of the particle engine against what a user would write instead.

    python benchmarks/bench_step.py [--width 5000 --samples 1000 --dim 10 --keep 0.5 --device cpu]

Baselines, timed in the same run (medians over ``--repeats``):

* ``torch.nn``: a plain module (``nn.Linear`` + tanh + readout, mean-field 1/n scale, one
  mask per step shared by all samples) with autograd and ``torch.optim.SGD`` at
  learning rate n·τ — the same update as docs/theory.md §1 eq. (3);
* ``hand-fused``: the closed-form dropout step written by hand in plain torch (tanh
  features, residual, both gradients, the update), eager and — with ``--compile``, the
  default on CUDA — through ``torch.compile``; checked against dropdyn's step on one mask
  before it is timed;
* ``floor``: one ATen tanh over the (width × m) pre-activations plus the two GEMMs
  (``W Zᵀ`` and ``S Z``) that any implementation must do at this width.

On CUDA with Triton installed it also times the fused step (``backend="fused"``,
:mod:`dropdyn.fused`); on CUDA also whole ``simulate`` calls of ``--run-steps`` steps,
recorded at their end only, per step, with and without ``graph=True`` (the unrecorded steps
replayed as one CUDA graph, :mod:`dropdyn.graph`). Also: R replicas in one ``simulate`` call
against R sequential calls.
Prints a Markdown table; ratios > 1 mean dropdyn is faster. ``--device cuda`` runs
everything on the GPU (masks drawn there too) and synchronises around each timed call.

``--contention`` times the dropout step and the ``torch.nn`` step instead while another
process spins on one of this process's CPUs (started and ended by the benchmark, and never
left running longer than ``--contention-seconds``): with torch's default threads, with one,
and with the count dropdyn's entry points choose (:mod:`dropdyn.threads`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time

import torch

from dropdyn import simulate, threads
from dropdyn.engine import rule_for, step
from dropdyn.masks import MaskStream
from dropdyn.model import Design, descent


def median_ms(fn, repeats: int, warmup: int = 3, device: str = "cpu") -> float:
    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def hand_fused_step(a, W, Z, y, mult, lr):
    """One dropout step by hand: X_i ← X_i − τ B_i Dφ(X_i)ᵀ r / m with F = B = ``mult``, tanh."""
    n, m = a.shape[0], Z.shape[0]
    S = torch.tanh(W @ Z.T)  # (n, m)
    r = (mult * a) @ S / n - y
    ga = mult * (S @ r) / m
    gW = (mult * a)[:, None] * (((1 - S * S) * r) @ Z) / m
    return a - lr * ga, W - lr * gW


class MeanField(torch.nn.Module):
    """The torch.nn baseline: f(z) = (1/n) Σ_i (mask_i/q) a_i tanh(w_i·z)."""

    def __init__(self, W: torch.Tensor, a: torch.Tensor):
        super().__init__()
        self.hidden = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        self.readout = torch.nn.Parameter(a.clone())
        with torch.no_grad():
            self.hidden.weight.copy_(W)

    def forward(self, z, mult):
        h = torch.tanh(self.hidden(z))
        return (h * mult) @ self.readout / self.readout.shape[0]


@contextlib.contextmanager
def busy_cpu(seconds: float):
    """Another process spinning on the last CPU this process may use, for at most ``seconds``."""
    cpu = max(threads.available_cpus())
    code = (f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nt = time.time()\n"
            f"while time.time() - t < {seconds}: pass")
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)  # its interpreter starting
        yield cpu
    finally:
        spinner.kill()
        spinner.wait()


def contention_table(step_fn, nn_fn, args) -> None:
    """The dropout step and the torch.nn step with one CPU taken by another process."""
    default = torch.get_num_threads()
    with busy_cpu(args.contention_seconds) as cpu:
        rows = []
        for label, n in ((f"torch's default ({default})", default), ("one (1)", 1), ("dropdyn's choice", None)):
            with threads.using(n) as used:
                t_drop = median_ms(step_fn, args.repeats)
            with threads.using(default if n is None else n):  # what the user's plain module runs with
                t_nn = median_ms(nn_fn, args.repeats)
            rows.append((f"{label}: {used}" if n is None else label, t_drop, t_nn))
    one = rows[1][1]
    print(f"\n### One CPU (#{cpu}) taken by another process: width={args.width}, m={args.samples}, d={args.dim}, "
          f"{args.dtype}\n")
    print("| dropdyn's threads | dropdyn dropout step, ms | torch.nn + autograd + SGD, ms | speed-up "
          "| × its one-thread time |")
    print("|---|---:|---:|---:|---:|")
    for label, t_drop, t_nn in rows:
        print(f"| {label} | {t_drop:.2f} | {t_nn:.2f} | {t_nn / t_drop:.2f}× | {t_drop / one:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--replica-width", type=int, default=1000)
    ap.add_argument("--replica-samples", type=int, default=100)
    ap.add_argument("--replica-steps", type=int, default=50)
    ap.add_argument("--run-steps", type=int, default=200, help="steps of each timed simulate call (CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the hand-fused step through torch.compile (default: on CUDA only)")
    ap.add_argument("--contention", action="store_true",
                    help="time the steps with one CPU taken by another process (CPU only; see above)")
    ap.add_argument("--contention-seconds", type=float, default=300.0,
                    help="the other process ends after this many seconds at the latest")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    dev = args.device
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {dev}: CUDA is not available here")
    g = torch.Generator().manual_seed(0)
    n, m, d, q, lr = args.width, args.samples, args.dim, args.keep, args.lr
    Z = torch.randn(m, d, generator=g, dtype=dtype)
    y = torch.randn(m, generator=g, dtype=dtype)
    X = torch.cat([torch.randn(n, 1, generator=g), torch.randn(n, d, generator=g) / d**0.5], 1).to(dtype)
    Z, y, X = Z.to(dev), y.to(dev), X.to(dev)
    rows = []

    # dropdyn: the engine's step on the packed state, one fresh mask per step
    design = Design.build(Z, y, "tanh", bias=False)
    a, W = design.pack(X[None])
    backends = {"": descent}
    if torch.device(dev).type == "cuda":
        try:
            from dropdyn.fused import fused_descent

            backends[", fused"] = fused_descent
        except ImportError:  # no Triton: the reference step only
            pass
    cuda = torch.device(dev).type == "cuda"
    # on a GPU also dropout without compacting its kept neurons (no host read per step), which
    # simulate() runs below engine.COMPACT_MIN_WORK
    variants = [("dropout", True), ("gd", True)] + ([("dropout", False)] if cuda else [])
    results = {}
    for label, direction in backends.items():
        for variant, compact in variants:
            rule = rule_for(variant, n, q)
            stream = MaskStream(q, (1, n), seed=0, device=dev)
            results[variant + ("" if compact else "-full") + label] = median_ms(
                lambda rule=rule, stream=stream, direction=direction, compact=compact: step(
                    design, a, W, lr, rule, stream.next() if rule.uses_masks else None, q, direction=direction,
                    compact=compact),
                args.repeats,
                device=dev,
            )

    # (a) torch.nn + autograd + SGD with the same semantics
    net = MeanField(X[:, 1:], X[:, 0]).to(dev, dtype)
    opt = torch.optim.SGD(net.parameters(), lr=n * lr)
    stream = MaskStream(q, (n,), seed=0, device=dev)

    def nn_step():
        mult = stream.next().to(dtype) / q
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((net(Z, mult) - y) ** 2).mean()
        loss.backward()
        opt.step()

    if args.contention:
        if cuda:
            raise SystemExit("--contention times CPU threads: use --device cpu")
        rule, stream = rule_for("dropout", n, q), MaskStream(q, (1, n), seed=0, device=dev)
        contention_table(lambda: step(design, a, W, lr, rule, stream.next(), q), nn_step, args)
        return
    t_nn = median_ms(nn_step, args.repeats, device=dev)

    # (c) the same step fused by hand, eager and compiled; first checked against dropdyn's
    Wd, ad = X[:, 1:].contiguous(), X[:, 0].contiguous()
    mask = MaskStream(q, (1, n), seed=5, device=dev).next()
    a1, W1, _ = step(design, a, W, lr, rule_for("dropout", n, q), mask, q)
    a2, W2 = hand_fused_step(ad, Wd, Z, y, mask[0].to(dtype) / q, lr)
    gap = max(float((a1[0] - a2).abs().max()), float((W1[0, :, :d] - W2).abs().max()))
    scale = float(X.abs().max())
    if not gap <= 1e-4 * scale:
        raise SystemExit(f"the hand-fused baseline differs from dropdyn's step by {gap:.3g}")
    stream = MaskStream(q, (n,), seed=0, device=dev)
    hand = {"hand-fused step, eager (c)": hand_fused_step}
    if args.compile if args.compile is not None else cuda:
        hand["hand-fused step, torch.compile (d)"] = torch.compile(hand_fused_step)
    t_hand = {name: median_ms(lambda fn=fn: fn(ad, Wd, Z, y, stream.next().to(dtype) / q, lr), args.repeats,
                              device=dev) for name, fn in hand.items()}

    # (b) the floor: tanh over (n, m) pre-activations + the two GEMMs
    def floor():
        S = torch.tanh(Wd @ Z.T)
        return S @ Z

    t_floor = median_ms(floor, args.repeats, device=dev)

    names = {"dropout": f"dropdyn dropout step (keep={q:g})", "dropout-full": "dropdyn dropout step, not compacted",
             "gd": "dropdyn GD step (all neurons)"}
    for label in backends:
        for key, name in names.items():
            if key + label in results:
                t = results[key + label]
                rows.append((name + label, t, t_nn / t, t / t_floor))
    rows.append(("torch.nn + autograd + SGD (a)", t_nn, 1.0, t_nn / t_floor))
    rows += [(name, t, t_nn / t, t / t_floor) for name, t in t_hand.items()]
    rows.append(("floor: tanh + 2 GEMMs (b)", t_floor, t_nn / t_floor, 1.0))

    where = torch.cuda.get_device_name(dev) if cuda else f"{torch.get_num_threads()} threads"
    print(f"\n### One step: width={n}, m={m}, d={d}, {args.dtype}, {where}\n")
    print("| what | median ms | speed-up vs (a) | × floor |")
    print("|---|---:|---:|---:|")
    for name, ms, sp, fl in rows:
        print(f"| {name} | {ms:.2f} | {sp:.2f}× | {fl:.2f} |")

    if cuda:  # whole runs: the loop, the divergence checks, and the graph
        steps = args.run_steps
        print(f"\n### Whole runs: per step of one {steps}-step simulate call (recorded at its end)\n")
        print("| what | median ms per step | speed-up vs (a) |")
        print("|---|---:|---:|")
        for label in backends:
            backend = "fused" if label else "torch"
            for variant in ("dropout", "gd"):
                for graph in (False, True):
                    t = median_ms(lambda v=variant, b=backend, g=graph: simulate(
                        v, X, Z, y, lr=lr, keep=q, steps=steps, record_every=steps, backend=b, graph=g),
                        max(3, args.repeats // 5), 1, dev) / steps
                    print(f"| {variant}, backend={backend}, graph={graph} | {t:.3f} | {t_nn / t:.2f}× |")

    # replicas: one batched call vs sequential calls
    R, nr, mr, steps = args.replicas, args.replica_width, args.replica_samples, args.replica_steps
    Zr = torch.randn(mr, d, generator=g, dtype=dtype)
    yr = torch.randn(mr, generator=g, dtype=dtype)
    Xr = torch.cat([torch.randn(R, nr, 1, generator=g), torch.randn(R, nr, d, generator=g) / d**0.5], -1)
    Xr, Zr, yr = Xr.to(dtype).to(dev), Zr.to(dev), yr.to(dev)
    kw = dict(lr=lr, keep=q, steps=steps, record_every=steps)
    t_batch = median_ms(lambda: simulate("dropout", Xr, Zr, yr, **kw), max(3, args.repeats // 5), 1, dev)
    t_seq = median_ms(
        lambda: [simulate("dropout", Xr[r], Zr, yr, **kw) for r in range(R)], max(3, args.repeats // 5), 1, dev
    )
    print(f"\n### {R} replicas × width {nr}, m={mr}, {steps} dropout steps per call\n")
    print("| what | median ms | throughput ratio |")
    print("|---|---:|---:|")
    print(f"| one call, (R, width, p) particles | {t_batch:.1f} | {t_seq / t_batch:.2f}× |")
    print(f"| {R} sequential calls | {t_seq:.1f} | 1.00× |")


if __name__ == "__main__":
    main()
