"""Every benchmark script runs and prints its table, at toy sizes (no timing is checked here:
speed is measured by running them, see docs/engine.md)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CASES = {
    "bench_deep.py": (["--layers", "2", "--width", "20", "--samples", "10", "--steps", "2", "--repeats", "1"],
                      ["| hidden layers | dropdyn.deep | torch.nn + autograd + SGD | ratio |", "| 2 |"]),
    "bench_step.py": (["--width", "300", "--samples", "50", "--repeats", "2", "--replicas", "2",
                       "--replica-width", "50", "--replica-steps", "2"],
                      ["torch.nn + autograd + SGD (a)", "hand-fused step, eager (c)",
                       "| one call, (R, width, p) particles |"]),
    "bench_width.py": (["--widths", "100", "--work", "2e4", "--steps", "2", "--repeats", "1",
                        "--allocators", "reuse,glibc"],
                       ["| 1e+02 | 200 | dropout | torch | reuse |", "| 1e+02 | 200 | gd | torch | glibc |"]),
    "bench_sme.py": (["--repeats", "1", "--width", "5", "--small-width", "5"],
                     ["matrix-free exact factor", "A dense Σ at D = 3,930 would need 0.12 GiB"]),
    "bench_alignment.py": (["--batch", "50", "--samples", "20", "--train-steps", "5", "--vgg-batch", "4",
                            "--hvp-repeats", "1"],
                           ["α (matrix-free estimate)", "dense path: H and Σ in float64",
                            "| VGG16 width 0.125, batch 4 |"]),
    "bench_paper.py": (["--steps", "3", "--sgd-steps", "2", "--repeats", "1", "--fig2-width", "60",
                        "--fig3-width", "40"],
                       ["| Figure 2: four variants × 3 steps, width 60,",
                        "| Figure 3: one SGD step, independent, width 40,"]),
    "bench_wide.py": (["--widths", "50", "--batches", "16", "--steps", "2", "--repeats", "1"],
                      ["| 50 | 16 | gd |", "| 50 | 16 | forward-only |"]),
    "bench_sweep.py": (["--widths", "10,20", "--replicas", "1"],
                       ["16-point phase sweep", "store overhead per run"]),
    "bench_tiles.py": (["--width", "3000", "--samples", "40", "--BN", "32", "--BM", "32", "--warps", "4",
                        "--stages", "1"], ["| 64×32×16 (default) | 4 | 1 | tf32x3 |", "| 32×32×16 | 4 | 1 | ieee |"]),
}
CUDA_ONLY = {"bench_tiles.py"}  # times Triton kernels on a GPU


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_prints_its_table(script, tmp_path):
    if script in CUDA_ONLY and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    args, expected = CASES[script]
    p = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    for line in expected:
        assert line in p.stdout, (line, p.stdout[-2000:])


def test_every_benchmark_has_a_case():
    assert sorted(CASES) == sorted(p.name for p in BENCH.glob("bench_*.py"))


def test_bench_step_under_contention_prints_its_rows(tmp_path):
    """``--contention``: another process spins on one CPU (ended by the benchmark), and the
    steps are timed with torch's default threads, one, and dropdyn's choice."""
    p = subprocess.run([sys.executable, str(BENCH / "bench_step.py"), "--width", "300", "--samples", "50",
                        "--repeats", "2", "--contention", "--contention-seconds", "60"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "taken by another process" in p.stdout and "| one (1) |" in p.stdout, p.stdout
    assert "| dropdyn's choice: " in p.stdout and "| torch's default (" in p.stdout, p.stdout
