"""The particle engine across widths: time per step, peak memory and neuron-samples per second.

    python benchmarks/bench_width.py [--device cpu] [--widths 1e3,1e4,1e5,1e6] [--work 1e8]
    python benchmarks/bench_width.py --device cuda --widths 1e4,1e5,1e6,1e7,1e8 --work 1e9 --backends torch,fused

Each point is ``simulate(variant, …)`` for ``--steps`` steps (records only at the ends) at
width n with m = min(``--samples``, ``--work`` / n) samples, d = ``--dim``, float32, in a
fresh Python process of its own, so that its peak memory is its own and a point that does
not fit is a row that says so rather than the end of the sweep. Time per step is the median
over ``--repeats`` runs of the whole call divided by its steps (the loop, mask drawing and
divergence checks included). Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU
(the inputs included) and, on the CPU, the process's peak resident set less its resident
set before the first run (the inputs and torch itself excluded).
Throughput is n·m / (time per step): the neuron-sample pairs a step evaluates.
``--allocators reuse,glibc`` times each point both with :func:`dropdyn.reuse_freed_memory`
(what the ``dropdyn`` command sets) and with glibc's defaults, one row each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def point(width: int, samples: int, dim: int, variant: str, backend: str, steps: int, repeats: int,
          device: str, allocator: str) -> dict:
    """Time one (width, samples, variant, backend) in this process, with glibc's allocator
    as it comes or set by :func:`dropdyn.reuse_freed_memory` (``allocator``)."""
    from dropdyn import reuse_freed_memory, simulate

    if allocator == "reuse":
        reuse_freed_memory()

    cuda = torch.device(device).type == "cuda"
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(samples, dim, generator=g).to(device)
    y = torch.randn(samples, generator=g).to(device)
    X = torch.cat([torch.randn(width, 1, generator=g), torch.randn(width, dim, generator=g) / dim**0.5], 1).to(device)
    kw = dict(lr=0.1, keep=0.5, steps=steps, record_every=steps, backend=backend, seed=1)

    def run():
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = simulate(variant, X, Z, y, **kw)  # returns its arrays on the CPU: synchronised
        return time.perf_counter() - t0, res

    with open("/proc/self/statm") as f:  # resident pages before any run
        before = int(f.read().split()[1]) * resource.getpagesize()
    run()  # warm-up (kernel compilation, allocator)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t, res = run()
        times.append(t / steps)
    ms = 1e3 * statistics.median(times)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"ms": ms, "peak_gib": peak / 2**30, "throughput": width * samples / (ms / 1e3),
            "compact": res.info.get("compact"), "diverged": res.diverged_at_step}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--widths", default=None, help="comma-separated (1e4 allowed); default 1e3…1e6 on the CPU, "
                                                   "1e4…1e8 on a GPU")
    ap.add_argument("--work", type=float, default=None, help="n·m per step at most (default 1e8 CPU, 1e9 GPU)")
    ap.add_argument("--samples", type=int, default=1000, help="m at most")
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--variants", default="dropout,gd")
    ap.add_argument("--backends", default="torch")
    ap.add_argument("--allocators", default="reuse", help="reuse (dropdyn.reuse_freed_memory, as the CLI), glibc "
                                                          "(its defaults), or both")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per point")
    ap.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: one point, JSON out
    args = ap.parse_args(argv)
    if args.point:
        width, samples, variant, backend, allocator = args.point.split(",")
        print(json.dumps(point(int(width), int(samples), args.dim, variant, backend, args.steps, args.repeats,
                               args.device, allocator)))
        return
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    widths = [int(float(w)) for w in (args.widths or ("1e4,1e5,1e6,1e7,1e8" if cuda else "1e3,1e4,1e5,1e6"))
              .split(",")]
    work = args.work or (1e9 if cuda else 1e8)
    where = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n### Width sweep: {where}, float32, d={args.dim}, keep 0.5, median of {args.repeats} runs of "
          f"{args.steps} steps\n")
    print("| width | m | variant | backend | allocator | ms / step | peak memory GiB | neuron-samples / s |")
    print("|---:|---:|---|---|---|---:|---:|---:|")
    for width in widths:
        samples = max(1, min(args.samples, int(work // width)))
        for backend in args.backends.split(","):
            for variant, allocator in itertools.product(args.variants.split(","), args.allocators.split(",")):
                cmd = [sys.executable, __file__, "--point", f"{width},{samples},{variant},{backend},{allocator}",
                       "--device", args.device, "--dim", str(args.dim), "--steps", str(args.steps),
                       "--repeats", str(args.repeats)]
                row = f"| {width:.0e} | {samples} | {variant} | {backend} | {allocator} |"
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"{row} over {args.timeout:g} s | | |", flush=True)
                    continue
                if p.returncode != 0:
                    why = (p.stderr.strip().splitlines() or ["failed"])[-1][:120].replace("|", "/")
                    print(f"{row} {why} | | |", flush=True)
                    continue
                r = json.loads(p.stdout.strip().splitlines()[-1])
                print(f"{row} {r['ms']:.3g} | {r['peak_gib']:.3g} | {r['throughput']:.3g} |", flush=True)


if __name__ == "__main__":
    main()
