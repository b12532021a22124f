"""Triton kernels of the fused step (see :mod:`dropdyn.fused`); imported only when used.

Two kernels, neither of which forms a (width × m) matrix in memory:

    forward   grid (R·⌈K/C⌉·⌈m/BM⌉,):  f_cj = Σ_{i in chunk c} v_i σ(w_i·z_j)   (v_i = a_i F_i / n)
    backward  grid (R·⌈K/BN⌉,):  e_ij = r_j + c a_i σ(w_i·z_j)
                                 ga_i = Σ_j e_ij σ(w_i·z_j) / m
                                 gW_i = a_i Σ_j e_ij σ'(w_i·z_j) z_j / m

Each program recomputes its tile of pre-activations w_i·z_j (a BN × BM block, in registers)
from the neurons' rows and the inputs' rows, in the spirit of fused attention. The forward
program adds its tiles into one BN × BM block and sums it over neurons once, at its end:
summed per tile, the reduction across threads was a third of the loop's instructions
(``scripts/fused_compile.py`` counts them). The logistic is one exp2 of one product. A row has P
coordinates (the padded input dimension), loaded as a block of BP, the power of two ≥ P.
Offsets are int64: R·K·P passes 2³¹ at width 10⁸ with two replicas. Each grid is flat: a
CUDA grid's second and third axes end at 65,535 blocks (width 4.2·10⁶ in 64-neuron tiles).
PREC is the contractions' precision ("ieee": FMAs in float32, the tensor cores in float64;
"tf32x3": float32 on the tensor cores in three TF32 passes, each operand split once by
``_split``, see ``_dot``). In float32 a reciprocal is one ``rcp.approx`` (``_reciprocal``),
except under the interpreter, which runs no PTX. The penalty c is read from memory
(``Pen``), and only where PENALTY: Triton passes a Python float as a float32, which rounded
c to 8 digits in float64 runs (found on the first GPU run).
"""

import os

import torch
import triton
import triton.language as tl

# activation codes, in the order of model.ACTIVATIONS
CODES = {"tanh": 0, "sigmoid": 1, "relu": 2, "softplus": 3, "erf": 4, "identity": 5}


# PTX may be written inline: an NVIDIA GPU, not Triton's interpreter (which runs no PTX) or ROCm
PTX = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1" and torch.version.hip is None)


@triton.jit
def _reciprocal(x):
    """1 / x. In float32 on NVIDIA GPUs one ``rcp.approx.ftz.f32`` (at most 1 ulp off, PTX ISA),
    where ``1.0 / x`` compiles to ``div.full.f32`` (2 ulp): the same reciprocal with a range
    check and a rescale around it, 4 more instructions per entry, a sixth of the forward loop."""
    if PTX and x.dtype == tl.float32:
        out = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                        is_pure=True, pack=1)
    else:
        out = 1.0 / x
    return out


@triton.jit
def _logistic(u, k: tl.constexpr):
    """1 / (1 + e^(−k·u)), its exponential an exp2 of one product (``tl.sigmoid(k * u)``
    multiplies twice before the exp2: by k, then by log₂e)."""
    return _reciprocal(1.0 + tl.math.exp2(u * (-1.4426950408889634 * k)))


@triton.jit
def _split(x, PREC: tl.constexpr):
    """For "tf32x3", ``(hi, lo)`` with x = hi + lo exactly and hi x rounded to TF32 (11 significant
    bits, ties away from zero: + half a TF32 unit to the bits, then the low 13 cleared); otherwise
    ``(x, x)``, of which :func:`_dot` reads the first."""
    if PREC == "tf32x3":
        hi = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
        lo = x - hi
    else:
        hi, lo = x, x
    return hi, lo


@triton.jit
def _dot(a, a_lo, b, b_lo, PREC: tl.constexpr):
    """a @ b, for "tf32x3" from operands split by :func:`_split`: lo·hi + hi·lo + hi·hi, three
    TF32 passes on the tensor cores chained through their accumulator (lo·lo, 2⁻²² of the
    product, is left out), the small terms first. Triton's own "tf32x3" splits both operands at
    every product, zeroes NaNs of the small terms and adds the result to a zero accumulator:
    about 4 instructions per entry of the forward loop and 5 of the backward one (sm_90) that
    this form saves (it splits each operand once, where it is loaded or formed, and lets a
    NaN through)."""
    if PREC == "tf32x3":
        acc = tl.dot(a_lo, b, input_precision="tf32")
        acc = tl.dot(a, b_lo, acc, input_precision="tf32")
        out = tl.dot(a, b, acc, input_precision="tf32")
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def _sigma(u, ACT: tl.constexpr):
    if ACT == 0:
        out = 2.0 * _logistic(u, 2.0) - 1.0  # tanh u
    elif ACT == 1:
        out = _logistic(u, 1.0)
    elif ACT == 2:
        out = tl.maximum(u, 0.0)
    elif ACT == 3:
        out = tl.maximum(u, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(u)))
    elif ACT == 4:
        out = tl.math.erf(u)
    else:
        out = u
    return out


@triton.jit
def _dsigma(u, ACT: tl.constexpr):
    if ACT == 0:
        s = _logistic(u, 2.0)
        out = 4.0 * s * (1.0 - s)
    elif ACT == 1:
        s = _logistic(u, 1.0)
        out = s * (1.0 - s)
    elif ACT == 2:
        out = tl.where(u > 0.0, 1.0, 0.0).to(u.dtype)
    elif ACT == 3:
        out = _logistic(u, 1.0)
    elif ACT == 4:
        out = 1.1283791670955126 * tl.exp(-u * u)
    else:
        out = u * 0.0 + 1.0
    return out


@triton.jit
def forward_kernel(W, V, Z, Fout, K, M, C, P, ACT: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                   BP: tl.constexpr, PREC: tl.constexpr):
    pid, blocks, chunks = tl.program_id(0).to(tl.int64), tl.cdiv(M, BM), tl.maximum(tl.cdiv(K, C), 1)
    rep, chunk = pid // (blocks * chunks), pid // blocks % chunks
    rm = pid % blocks * BM + tl.arange(0, BM)
    rp = tl.arange(0, BP)
    in_m, in_p = rm < M, rp < P
    z = tl.load(Z + rm[:, None] * P + rp[None, :], mask=in_m[:, None] & in_p[None, :], other=0.0)  # (BM, BP)
    z_hi, z_lo = _split(z, PREC)
    zt, zt_lo = tl.trans(z_hi), tl.trans(z_lo)
    acc = tl.zeros((BN, BM), dtype=z.dtype)
    end = tl.minimum(chunk * C + C, K)  # this chunk's neurons: [chunk·C, end)
    for n0 in range(chunk * C, end, BN):
        rn = n0 + tl.arange(0, BN)
        in_n = rn < end
        w = tl.load(W + rep * K * P + rn[:, None] * P + rp[None, :], mask=in_n[:, None] & in_p[None, :],
                    other=0.0)  # (BN, BP)
        v = tl.load(V + rep * K + rn, mask=in_n, other=0.0)
        w, w_lo = _split(w, PREC)
        u = _dot(w, w_lo, zt, zt_lo, PREC)  # (BN, BM)
        acc += v[:, None] * _sigma(u, ACT)
    tl.store(Fout + (rep * chunks + chunk) * M + rm, tl.sum(acc, axis=0), mask=in_m)


@triton.jit
def backward_kernel(W, A, Z, Rin, GA, GW, K, M, Pen, P, ACT: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                    BP: tl.constexpr, PREC: tl.constexpr, PENALTY: tl.constexpr):
    pid, blocks = tl.program_id(0).to(tl.int64), tl.cdiv(K, BN)
    rep = pid // blocks
    rn = pid % blocks * BN + tl.arange(0, BN)
    rp = tl.arange(0, BP)
    in_n, in_p = rn < K, rp < P
    w = tl.load(W + rep * K * P + rn[:, None] * P + rp[None, :], mask=in_n[:, None] & in_p[None, :],
                other=0.0)  # (BN, BP)
    a = tl.load(A + rep * K + rn, mask=in_n, other=0.0)
    w, w_lo = _split(w, PREC)
    ga = tl.zeros((BN,), dtype=w.dtype)
    gw = tl.zeros((BN, BP), dtype=w.dtype)
    if PENALTY:
        ca = tl.load(Pen) * a  # c a_i
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
        in_m = rm < M
        z = tl.load(Z + rm[:, None] * P + rp[None, :], mask=in_m[:, None] & in_p[None, :], other=0.0)  # (BM, BP)
        r = tl.load(Rin + rep * M + rm, mask=in_m, other=0.0)
        z, z_lo = _split(z, PREC)
        u = _dot(w, w_lo, tl.trans(z), tl.trans(z_lo), PREC)  # (BN, BM)
        s = _sigma(u, ACT)
        if PENALTY:  # samples past M: r = 0 but c a_i σ(0) need not be
            e = tl.where(in_m[None, :], r[None, :] + ca[:, None] * s, 0.0)
        else:  # r = 0 on samples past M
            e = tl.broadcast_to(r[None, :], (BN, BM))
        ga += tl.sum(e * s, axis=1)
        g, g_lo = _split(e * _dsigma(u, ACT), PREC)
        gw += _dot(g, g_lo, z, z_lo, PREC)  # (BN, BP)
    tl.store(GA + rep * K + rn, ga / M, mask=in_n)
    tl.store(GW + rep * K * P + rn[:, None] * P + rp[None, :], a[:, None] * gw / M, mask=in_n[:, None] & in_p[None, :])
