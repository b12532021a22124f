"""The fused Triton step against the reference closed forms: on a GPU when there is one,
otherwise on the CPU under Triton's interpreter (so CI without a GPU checks the kernels)."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dropdyn
from dropdyn import InputError
from dropdyn.fused import CHUNK_NEURONS, MAX_DIM, check_fused, fused_descent, tiles
from dropdyn.limits import simulate_limit
from dropdyn.model import ACTIVATIONS, Design, descent

triton = pytest.importorskip("triton")  # conftest.py has set TRITON_INTERPRET=1 where there is no GPU
tl = pytest.importorskip("triton.language")
step = pytest.importorskip("dropdyn._triton_step")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def problem(R, n, m, d, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    X = torch.randn(R, n, d + 1 + bias, generator=g, dtype=torch.float64)
    return (t.to(DEVICE, dtype) for t in (X, Z, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_fused_descent_equals_reference(activation, bias, dtype):
    # width and samples not multiples of the 64-blocks, two replicas, unequal forward weights, a penalty
    X, Z, y = problem(2, 70, 90, 5, bias, dtype)
    design = Design.build(Z, y, activation, bias)
    a, W = design.pack(X)
    weights = torch.rand(2, 70, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(a) / 70
    for penalty in (0.0, 0.3):
        ref = descent(design, a.clone(), W.clone(), weights, penalty)
        out = fused_descent(design, a, W, weights, penalty)
        for name, x, r in zip(("ga", "gW", "r"), out, ref, strict=True):
            assert x.shape == r.shape and x.dtype == r.dtype
            err = float((x - r).abs().max() / r.abs().max())
            assert err < TOL[dtype], (name, penalty, err)


@pytest.mark.parametrize("d", [3, 40, 100])
def test_fused_step_for_input_dimensions_that_are_not_a_power_of_two(d):
    # rows of P = 48 and 112 padded coordinates, loaded as blocks of 64 and 128
    X, Z, y = problem(2, 70, 30, d, True, torch.float64, seed=8)
    kw = dict(lr=0.3, keep=0.5, steps=3, seed=2)
    ref, fused = (dropdyn.simulate("dropout", X, Z, y, backend=b, **kw) for b in ("torch", "fused"))
    assert float((fused.particles - ref.particles).abs().max()) < 1e-12


def test_fused_backend_refuses_wide_inputs():
    X, Z, y = problem(1, 10, 5, 130, False, torch.float64)
    with pytest.raises(InputError, match="backend 'fused' takes inputs of dimension d \\+ bias <= 128, got 130"):
        dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=1.0, steps=1, backend="fused")


@pytest.mark.parametrize("m", [1, 10, 20, 130])
def test_fused_output_split_over_neuron_chunks(monkeypatch, m):
    # the forward reduction in chunks of 100 neurons (not a multiple of the 64-neuron tile; the
    # last chunk partial), sample tiles of 16, 32 and 64 (m = 1, 10, 20, 130); no neurons at
    # all gives f = 0
    from dropdyn import fused
    from dropdyn.engine import reference_output

    monkeypatch.setattr(fused, "CHUNK_NEURONS", 100)
    X, Z, y = problem(2, 300, m, 3, True, torch.float64, seed=7)
    design = Design.build(Z, y, "tanh", True)
    a, W = design.pack(X)
    weights = torch.full_like(a, 1 / 300)
    f = fused.fused_output(design, a, W, weights)
    assert float((f - reference_output(design, a, W, weights)).abs().max()) < 1e-12
    assert torch.equal(fused.fused_output(design, a[:, :0], W[:, :0], weights[:, :0]), torch.zeros(2, m).to(y))
    ga, gW, f = fused_descent(design, a[:, :0], W[:, :0], weights[:, :0])
    assert ga.shape == (2, 0) and gW.shape == (2, 0, W.shape[-1]) and torch.equal(f, torch.zeros(2, m).to(y))


@triton.jit
def _split_and_reciprocal(X, HI, LO, INV, N, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(X + i, mask=i < N, other=1.0)
    hi, lo = step._split(x, "tf32x3")
    tl.store(HI + i, hi, mask=i < N)
    tl.store(LO + i, lo, mask=i < N)
    tl.store(INV + i, step._reciprocal(x), mask=i < N)


def test_tf32_split_is_exact_and_the_reciprocal_within_an_ulp():
    # x = hi + lo exactly, hi a TF32 number (its low 13 bits clear) rounded to nearest (ties
    # away: 1 + 2⁻¹¹ is one), so |lo| ≤ 2⁻¹¹|x| and the hardware's TF32 reading of lo
    # (truncation at worst) costs at most 2⁻²¹|x|; the reciprocal (rcp.approx on a GPU, a
    # division under the interpreter) within 1 ulp of the float64 one, magnitudes 2⁻¹²⁰…2¹²⁰
    g = torch.Generator().manual_seed(0)
    ties = torch.tensor([1 + 2.0**-11, -(1 + 2.0**-11), 1 + 3 * 2.0**-11, 2.0**-120, 2.0**120])
    x = torch.randn(4000, generator=g) * 2.0 ** torch.randint(-100, 100, (4000,), generator=g)
    x = torch.cat([ties, x]).to(DEVICE, torch.float32)
    hi, lo, inv = (torch.empty_like(x) for _ in range(3))
    _split_and_reciprocal[(1,)](x, hi, lo, inv, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    assert torch.equal(hi + lo, x)
    assert int((hi.view(torch.int32) & 0x1FFF).abs().max()) == 0
    assert bool((lo.abs() <= 2.0**-11 * x.abs()).all())
    assert hi[:3].tolist() == [1 + 2.0**-10, -(1 + 2.0**-10), 1 + 2 * 2.0**-10]  # ties away from zero
    exact = 1 / x[x != 0].double()
    assert bool(((inv[x != 0].double() - exact).abs() <= torch.finfo(torch.float32).eps * exact.abs()).all())


def test_three_tf32_products_of_split_operands_are_float32_accurate():
    # the products the tensor cores form from _split's parts, emulated: TF32 products exact,
    # lo read as TF32 by truncation (the worst reading), lo·lo left out; against the float64
    # product, at most 2⁻²⁰ of Σ|a||b| (the bound is 2⁻²¹ + 2⁻²¹ + 2⁻²²)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, 11, generator=g), torch.randn(11, 50, generator=g)
    x = torch.cat([a.flatten(), b.flatten()]).to(DEVICE)
    hi, lo, inv = (torch.empty_like(x) for _ in range(3))
    _split_and_reciprocal[(1,)](x, hi, lo, inv, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    tf32 = (lo.cpu().view(torch.int32) & ~0x1FFF).view(torch.float32).double()  # lo, truncated
    hi = hi.cpu().double()
    (a_hi, b_hi), (a_lo, b_lo) = ((t[:a.numel()].view(200, 11), t[a.numel():].view(11, 50)) for t in (hi, tf32))
    product = a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi
    exact, scale = a.double() @ b.double(), a.double().abs() @ b.double().abs()
    assert float(((product - exact).abs() / scale).max()) < 2.0**-20


def test_tiles_fit_triton_dot_and_the_register_budget():
    # every tile edge ≥ 16 (tl.dot's smallest on NVIDIA GPUs in Triton 3.6; 3.9 takes 8), the
    # coordinate block a power of two covering the row, a (BN, BP) block of at most 2048 entries
    for P, m, size in itertools.product(range(1, MAX_DIM + 1), (1, 16, 17, 64, 1000), (4, 8)):
        t = tiles(P, m, size)
        assert t.BP >= max(P, 16) and t.BP & (t.BP - 1) == 0 and t.BP < 2 * max(P, 16)
        assert min(t.BN, t.BM) >= 16 and t.BN * t.BP <= 2048 and t.num_stages == 1
        assert t.BM <= max(16, 2 * m) and CHUNK_NEURONS % t.BN == 0


def test_kernels_compile_for_gpus_within_their_resources():
    # compiled ahead of time for sm_80 and sm_90 by Triton's own ptxas, no GPU needed: each
    # kernel compiles (float64 tl.dot included) and its shared memory fits 96 KiB; spills are
    # reported by the script (a performance finding, which the default tiles avoid), not here;
    # so is the loop's length, which must be found (a loop of a few instructions per entry)
    cuobjdump = Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("this Triton ships no NVIDIA toolchain")
    script = Path(__file__).parents[1] / "scripts" / "fused_compile.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, str(script), "--activation", "tanh,softplus", "--dim", "2,128"],
                       capture_output=True, text=True, env=env, timeout=600)
    rows = [line.split("|")[1:-1] for line in p.stdout.splitlines() if line.startswith("| forward")
            or line.startswith("| backward")]
    assert len(rows) == 2 * 2 * 2 * 2 * 2, p.stdout[-2000:] + p.stderr[-2000:]
    for kernel, arch, dtype, activation, dim, _, registers, _, shared, per_entry, verdict in rows:
        assert "does not compile" not in verdict and float(shared) <= 96, (kernel, arch, dtype, activation, dim)
        assert 0 < int(registers) <= 255
        assert 1 < float(per_entry) < 1000, (kernel, arch, dtype, activation, dim, per_entry)


@pytest.mark.parametrize("variant", dropdyn.VARIANTS)
def test_every_variant_runs_the_same_with_the_fused_backend(variant):
    X, Z, y = problem(2, 100, 40, 2, False, torch.float64, seed=3)
    kw = dict(lr=0.5, keep=0.5, steps=10, seed=1, record_every=5, test_inputs=Z[:7], test_targets=y[:7],
              probe_inputs=Z[:3])
    ref = dropdyn.simulate(variant, X, Z, y, **kw)
    fused = dropdyn.simulate(variant, X, Z, y, backend="fused", **kw)
    assert fused.info["backend"] == "fused" and fused.diverged_at_step is None
    for name in ("particles", "risk", "test_risk", "outputs"):  # the records use the fused forward pass too
        assert float((getattr(fused, name) - getattr(ref, name)).abs().max()) < 1e-12, name


def test_limits_run_with_the_fused_backend():
    X, Z, y = problem(1, 80, 30, 2, True, torch.float64, seed=4)
    X, kw = X[0], dict(time=0.5, h=0.05, alpha=0.5, seed=2)
    ref = simulate_limit("III", X, Z, y, **kw)
    fused = simulate_limit("III", X, Z, y, backend="fused", **kw)
    assert float((fused.particles - ref.particles).abs().max()) < 1e-12


def test_fused_backend_is_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="runs on CUDA devices"):
        check_fused(torch.device("cpu"))
    with pytest.raises(InputError, match="unknown backend .triton.; choose one of fused, torch"):
        dropdyn.simulate("gd", torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(5), lr=0.1, keep=1.0, steps=1,
                         backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", dropdyn.VARIANTS)
def test_fused_on_the_gpu_follows_the_cpu_reference_step_by_step(variant):
    X, Z, y = (t.cpu() for t in problem(2, 300, 50, 3, True, torch.float64, seed=5))
    masks = dropdyn.draw_masks(0.5, 20, (2, 300), seed=6)  # the same masks on both devices
    kw = dict(lr=0.5, keep=0.5, steps=20, masks=masks, record_every=1)
    cpu = dropdyn.simulate(variant, X, Z, y, **kw)
    gpu = dropdyn.simulate(variant, X, Z, y, device="cuda", backend="fused", **kw)
    assert float((gpu.risk - cpu.risk).abs().max()) < 1e-10  # every step's risk
    assert float((gpu.particles - cpu.particles).abs().max()) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_step_beyond_the_grid_limit_of_a_second_axis():
    # 5·10⁶ neurons are 78,125 tiles of 64: more than a CUDA grid's second axis holds (65,535),
    # where the backward kernel's tiles once were (width 10⁷ failed with "invalid argument")
    n = 5_000_000
    X, Z, y = problem(1, n, 16, 2, False, torch.float64, seed=9)
    design = Design.build(Z, y, "tanh", False)
    a, W = design.pack(X)
    weights = torch.full_like(a, 1.0 / n)
    for x, r in zip(fused_descent(design, a, W, weights), descent(design, a, W, weights, 0.0), strict=True):
        assert float((x - r).abs().max() / r.abs().max()) < 1e-12


@pytest.mark.parametrize("name, settings", [
    ("teacher-student", dict(width=60, steps=8, records=4, n_test=40)),
    ("phase-cell", dict(a=0.5, b=0.5, widths="40,80", time=0.3, replicas=2)),
    ("convergence", dict(phase="III", widths="100,200", time=0.3, replicas=2)),
])
def test_experiments_run_on_the_fused_backend(name, settings, tmp_path):
    # `--backend fused` reaches every simulate call of an engine experiment: same summary as the reference
    from dropdyn.runs import scalar_summary

    summary = {}
    for backend in ("torch", "fused"):
        path = dropdyn.run(name, root=tmp_path / backend, backend=backend, device=DEVICE, **settings)
        run = dropdyn.load(path)
        assert run.config["backend"] == backend
        summary[backend] = {k: v for k, v in scalar_summary(run.summary).items()
                            if not k.endswith("seconds") and k != "sweep"}  # times, and the sweep's own key
    assert summary["fused"].keys() == summary["torch"].keys()
    for k, v in summary["torch"].items():
        if isinstance(v, float):
            assert summary["fused"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert summary["fused"][k] == v, k


def test_the_kernels_write_only_within_their_outputs():
    # 70 neurons and 90 samples, not multiples of the tiles (64 × 32): every store past K or m must
    # be masked off. A write past the end of an output lands in memory that a GPU program of
    # another tile may be writing (a race; the interpreter runs the programs in order, so it
    # shows only at the end): a sentinel after each output catches it
    from triton import cdiv

    from dropdyn.engine import reference_output

    X, Z, y = problem(2, 70, 90, 5, True, torch.float64, seed=3)
    design = Design.build(Z, y, "tanh", True)
    a, W = design.pack(X)
    R, K, P = W.shape
    m, t, sentinel = 90, tiles(P, 90, 8), 12345.0
    assert K % t.BN and m % t.BM

    def guarded(n):
        return torch.full((n + 64,), sentinel, dtype=W.dtype, device=W.device)

    weights = torch.full_like(a, 1 / K)
    f = guarded(R * m)
    step.forward_kernel[(R * cdiv(m, t.BM),)](W, a * weights, design.Z, f, K, m, CHUNK_NEURONS, P, ACT=0,
                                              **t._asdict())
    r = f[:R * m].view(R, m) - design.y
    assert float((f[:R * m].view(R, m) - reference_output(design, a, W, weights)).abs().max()) < 1e-12
    ga, gW = guarded(R * K), guarded(R * K * P)
    pen = W.new_full((1,), 0.3)
    step.backward_kernel[(R * cdiv(K, t.BN),)](W, a, design.Z, r.contiguous(), ga, gW, K, m, pen, P, ACT=0,
                                               PENALTY=True, **t._asdict())
    want = descent(design, a.clone(), W.clone(), weights, 0.3)
    assert float((ga[:R * K].view(R, K) - want[0]).abs().max()) < 1e-12
    assert float((gW[:R * K * P].view(R, K, P) - want[1]).abs().max()) < 1e-12
    for out, n in ((f, R * m), (ga, R * K), (gW, R * K * P)):
        assert bool((out[n:] == sentinel).all())
