"""Cost of one SME step: matrix-free exact diffusion vs a dense Σ, and vs a dropout step.

    python benchmarks/bench_sme.py [--repeats 5 --small-width 50 --width 1000]

1. 7×7 MNIST (4 vs 9, 800 images, bias input), width 50: D = 2,550. One order-1 SME
   Euler–Maruyama step with the matrix-free diffusion (``F z``, the exact factor of Σ)
   against the dense baseline a user would write: form Σ (as ``F Fᵀ``, the cheapest
   dense form), eigendecomposition, multiply ``Σ^{1/2} z``.
2. 28×28 MNIST, width 1000: D ≈ 786,000 (a dense Σ would need 4.5 TiB). One SME step
   against one dropout step of the same network, each in its own process so that its
   peak memory (max RSS) is its own.

Medians over ``--repeats`` after one warm-up; ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from dropdyn import sme
from dropdyn.experiments._sme import SMESettings, problem
from dropdyn.sme_dynamics import sme_step


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _setup(size: int, width: int):
    P = problem(SMESettings(input_size=size, width=width))
    return P.theta0[None], P.inputs, P.targets


def _one(kind: str, size: int, width: int, repeats: int) -> dict:
    """Time one step of ``kind`` in this process; report seconds and peak RSS."""
    import resource

    theta, X, y = _setup(size, width)
    g = torch.Generator().manual_seed(0)
    if kind == "dense":
        def fn():
            S = sme.noise_covariance(theta[0], X, y, 0.5)
            root = sme.dense_sqrt(S.to_dense())
            drift = -sme.modified_loss_grad(theta, X, y, 0.5)
            z = torch.randn(root.shape[0], dtype=theta.dtype, generator=g)
            return theta + 0.01 * drift + 0.1 * (root @ z).reshape(theta.shape)
    else:
        dyn = {"sme": "sme1", "dropout": "dropout"}[kind]

        def fn():
            return sme_step(dyn, theta, X, y, lr=0.1, keep=0.5, substeps=1, generator=g)
    sec = _median_seconds(fn, repeats)
    return {"seconds": sec, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "D": theta[0].numel()}


def _in_subprocess(kind: str, size: int, width: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, str(size), str(width), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small-width", type=int, default=50, help="width of the 7×7 case (default 50)")
    ap.add_argument("--width", type=int, default=1000, help="width of the 28×28 case (default 1000)")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "SIZE", "WIDTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats)))
        return
    small = {k: _in_subprocess(k, 7, args.small_width, args.repeats) for k in ("sme", "dense")}
    big = {k: _in_subprocess(k, 28, args.width, args.repeats) for k in ("dropout", "sme")}
    D = big["sme"]["D"]
    print(f"\n### One SME step, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| case | step | median time | peak RSS of the process | ratio |")
    print("|---|---|---:|---:|---:|")
    print(f"| 7×7, width {args.small_width}, D = {small['sme']['D']:,} | dense Σ, eigh, multiply | "
          f"{small['dense']['seconds'] * 1e3:.1f} ms | {small['dense']['peak_rss_gib']:.2f} GiB | 1 |")
    print(f"| | matrix-free exact factor | {small['sme']['seconds'] * 1e3:.2f} ms | "
          f"{small['sme']['peak_rss_gib']:.2f} GiB | **{small['dense']['seconds'] / small['sme']['seconds']:.0f}× "
          f"faster** |")
    print(f"| 28×28, width {args.width}, D = {D:,} | dropout step | {big['dropout']['seconds'] * 1e3:.0f} ms | "
          f"{big['dropout']['peak_rss_gib']:.2f} GiB | 1 |")
    print(f"| | SME step (drift + matrix-free diffusion) | {big['sme']['seconds'] * 1e3:.0f} ms | "
          f"{big['sme']['peak_rss_gib']:.2f} GiB | **{big['sme']['seconds'] / big['dropout']['seconds']:.1f}× "
          f"a dropout step** |")
    dense = D * D * 8
    size = f"{dense / 1024**4:.1f} TiB" if dense >= 1024**4 else f"{dense / 1024**3:.2g} GiB"
    print(f"\nA dense Σ at D = {D:,} would need {size} in float64.")


if __name__ == "__main__":
    main()
