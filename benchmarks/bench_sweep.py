"""Sweeps: a 16-point phase-sweep grid on 2 Dask workers (and a 2-process pool) against
the serial executor, and the run store's overhead per run.

    python benchmarks/bench_sweep.py [--widths 2000,4000 --replicas 4 --workers 2 --grids balanced,corner]

The serial, process-pool and Dask executors run the same 16 ``phase-cell`` points into
fresh stores with one torch thread per point (what makes their tables bit-identical);
the pool and Dask times include starting their worker processes and the LocalCluster.
The store overhead is what a sweep adds to each run: the key, the index rows (running,
then complete) and the atomic run folder with its config and summary — median over 200
runs of an empty experiment body.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dropdyn.lab.store import open_run, run_key
from dropdyn.runs import RunIndex
from dropdyn.sweep import make_sweep, run_sweep

GRIDS = {  # 16 cells each; "corner" includes the a = b = 1 cells whose critical kernel dominates the work
    "balanced": [0, 0.25, 0.5, 0.75],
    "corner": [0, 0.5, 0.75, 1],
}


def sweep_speedup(widths: str, replicas: int, workers: int, values: list[float]) -> dict:
    spec = {"experiment": "phase-cell", "name": "bench",
            "base": {"widths": widths, "replicas": replicas, "time": 1.0}, "grid": {"a": values, "b": values}}
    out = {}
    for executor in ("serial", "processes", "dask"):
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            res = run_sweep(make_sweep(spec), root, executor=executor, workers=workers)
            out[executor] = time.perf_counter() - t0
            assert res.count("complete") == 16, res.outcomes
    return out


def store_overhead(runs: int = 200) -> float:
    times = []
    with tempfile.TemporaryDirectory() as root:
        index = RunIndex(root)
        for i in range(runs):
            cfg = {"i": i, "widths": "250,500"}
            t0 = time.perf_counter()
            key = run_key("phase-cell", cfg)
            index.start(f"phase-cell/{key}", key, "phase-cell", cfg, "bench")
            with open_run("phase-cell", cfg, Path(root) / "phase-cell" / key) as folder:
                folder.write_json("summary.json", {"x": 1.0})
            index.finish(f"phase-cell/{key}", key, "phase-cell", cfg, {"x": 1.0}, sweep="bench", seconds=0.0)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="2000,4000")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grids", default="balanced", help="comma-separated: balanced, corner")
    args = ap.parse_args(argv)
    for grid in args.grids.split(","):
        s = sweep_speedup(args.widths, args.replicas, args.workers, GRIDS[grid])
        print(f"16-point phase sweep, {grid} grid a,b in {GRIDS[grid]} (widths {args.widths}, {args.replicas} "
              f"replicas), {args.workers} workers: serial {s['serial']:.1f} s, process pool {s['processes']:.1f} s "
              f"({s['serial'] / s['processes']:.2f}x), dask {s['dask']:.1f} s -> speedup "
              f"{s['serial'] / s['dask']:.2f}x (target >= 1.7x)", flush=True)
    print(f"store overhead per run (median of 200): {1000 * store_overhead():.1f} ms (target < 50 ms)")


if __name__ == "__main__":
    main()
