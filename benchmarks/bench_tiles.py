"""The fused kernels' tiles on this GPU: time and accuracy of each launch configuration.

    python benchmarks/bench_tiles.py [--width 1000000] [--samples 1000] [--dim 10] [--dtype float32]

For each configuration (BN neurons × BM samples, warps, pipeline stages, tl.dot's input
precision) it times the forward kernel (``fused_output``: f = Σ_i v_i σ(w_i·z_j)) and
the backward kernel (``fused_descent`` less ``fused_output``) with ``triton.testing.do_bench``
(median), and gives the largest error of (ga, gW, r) relative to the float64 reference step
(``dropdyn.model.descent``), for a tanh network of one replica at the given width. The first
row is what ``dropdyn.fused.tiles`` chooses. A configuration that does not compile or does
not fit in the GPU's registers and shared memory is a row that says so.
"""

from __future__ import annotations

import argparse
import itertools

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--BN", default="32,64,128")
    ap.add_argument("--BM", default="32,64")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--precisions", default=None, help="default: ieee,tf32x3 in float32, ieee in float64")
    args = ap.parse_args(argv)
    from triton.testing import do_bench

    from dropdyn.fused import Tiles, fused_descent, fused_output, tiles
    from dropdyn.model import Design, descent

    dtype, n, m, d = getattr(torch, args.dtype), args.width, args.samples, args.dim
    g = torch.Generator().manual_seed(0)
    Z, y = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, generator=g, dtype=torch.float64)
    X = torch.cat([torch.randn(n, 1, generator=g, dtype=torch.float64),
                   torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5], 1)[None].cuda()
    exact = Design.build(Z.cuda(), y.cuda(), "tanh", bias=False)
    weights = torch.full((1, n), 1.0 / n, dtype=torch.float64, device="cuda")
    ref = descent(exact, *exact.pack(X), weights, 0.0)
    design = Design.build(Z.to(dtype).cuda(), y.to(dtype).cuda(), "tanh", bias=False)
    a, W = design.pack(X.to(dtype))
    weights = weights.to(dtype)

    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    precisions = (args.precisions or ("ieee,tf32x3" if dtype == torch.float32 else "ieee")).split(",")
    P = W.shape[-1]
    default = tiles(P, m, W.element_size())
    configs = [default] + [Tiles(BN, BM, default.BP, w, s, prec) for prec, BN, BM, w, s in itertools.product(
        precisions, ints(args.BN), ints(args.BM), ints(args.warps), ints(args.stages))]
    print(f"### Fused kernels' tiles: width={n}, m={m}, d={d}, {args.dtype}, tanh, "
          f"{torch.cuda.get_device_name()}\n")
    print("| BN×BM×BP | warps | stages | precision | forward ms | backward ms | step ms | max rel. error |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for t in dict.fromkeys(configs):  # the default first, once
        mark = " (default)" if t == default else ""
        head = f"| {t.BN}×{t.BM}×{t.BP}{mark} | {t.num_warps} | {t.num_stages} | {t.PREC} |"
        try:
            out = fused_descent(design, a, W, weights, 0.0, t)
            fwd = do_bench(lambda t=t: fused_output(design, a, W, weights, t), return_mode="median")
            both = do_bench(lambda t=t: fused_descent(design, a, W, weights, 0.0, t), return_mode="median")
        except Exception as error:  # out of resources, or not compiled: this configuration's finding
            print(f"{head} fails: {str(error).strip().splitlines()[-1][:80]} | | | |")
            continue
        err = max(float((x.double() - r).abs().max() / r.abs().max()) for x, r in zip(out, ref, strict=True))
        print(f"{head} {fwd:.3f} | {both - fwd:.3f} | {both:.3f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
