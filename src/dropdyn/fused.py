"""The fused step: :func:`dropdyn.model.descent` computed by two Triton kernels that never
form the (width × m) feature matrices (``simulate(..., backend="fused")``).

The reference step materialises the pre-activations U = W Zᵀ, the features and their
slopes, each (width × m): at width 10⁶ and m = 1000 that is several GB of memory traffic
per step. The fused kernels (``_triton_step``) tile neurons × samples, recompute each tile's
pre-activations in registers, and reduce them at once: a forward reduction over neurons
gives the residual r (R, m), a backward reduction over samples gives each neuron's descent
direction. Memory traffic is the particles, the inputs and r. A run's records (risks,
test risks, probe outputs) use the fused forward pass too, so no part of a fused run forms
a (width × m) matrix, and ``simulate`` sizes its memory check accordingly.

It runs on CUDA devices with Triton installed, and on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment before Triton is first imported), which is how
the tests check it against the reference closed forms on machines without a GPU; the
tests also compile it for sm_80 and sm_90 without one (``scripts/fused_compile.py``).
Timed on an H100 (docs/engine.md, "On a GPU"), it is the backend to use there, though
``backend="torch"`` stays the default until a second GPU session has confirmed it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ._checks import InputError

Tensor = torch.Tensor
# The forward reduction over neurons is split into chunks of this many neurons, one program
# each, whose partial sums (R, chunks, m) are added by torch (deterministic, unlike atomics):
# at width 10⁸ with m = 10 a single program per sample block would run alone on the GPU.
CHUNK_NEURONS = 2048
# A neuron's row (its P padded input coordinates) is one block of registers: the kernels take
# inputs of dimension d + bias ≤ MAX_DIM (the tiles would spill beyond it).
MAX_DIM = 128


class Tiles(NamedTuple):
    """A launch of the fused kernels: tiles of BN neurons × BM samples × BP coordinates, on
    ``num_warps`` warps, without software pipelining (``num_stages = 1``), with multiplies and
    adds contracted to FMAs (Triton's default up to 3.9, which warns that 3.10 turns it off)."""

    BN: int
    BM: int
    BP: int
    num_warps: int
    num_stages: int = 1
    PREC: str = "ieee"  # the contractions' precision ("ieee", "tf32", or "tf32x3": _triton_step._dot)
    enable_fp_fusion: bool = True


# (bytes per element, BP) → (BN, BM, num_warps): the largest tiles whose compiled kernels keep
# their tiles in registers (≤ 24 bytes a thread spilled, a few scalars) for every activation,
# on sm_80 and sm_90, with Triton 3.6, 3.7 and 3.9 (scripts/fused_compile.py). At BP = 16 they
# were also the fastest of 49 configurations timed on an H100 (benchmarks/bench_tiles.py);
# the other rows are untimed. float32 contracts as "tf32x3" (3.5× the FMAs there, and closer
# to the float64 step), float64 as "ieee" (the tensor cores' mma.f64).
TILE_TABLE = {(4, 16): (64, 32, 4), (4, 32): (64, 32, 4), (4, 64): (32, 32, 4), (4, 128): (16, 32, 8),
              (8, 16): (64, 32, 4), (8, 32): (32, 32, 4), (8, 64): (32, 32, 4), (8, 128): (16, 32, 8)}


def tiles(P: int, m: int, element_size: int = 4) -> Tiles:
    """The tiles for inputs of padded dimension ``P`` (d + bias ≤ :data:`MAX_DIM`), ``m``
    samples and ``element_size`` bytes per number (4: float32, 8: float64).

    BP is the power of two ≥ P, at least 16 (tl.dot's smallest inner dimension on NVIDIA
    GPUs); BN, BM and the warps come from :data:`TILE_TABLE`, with BM shrunk to the power of
    two ≥ m (at least 16) for few samples. The loops are not software-pipelined: Triton's
    default 3 stages made the kernels spill, in float32 from BP = 64 on.
    """
    from triton import next_power_of_2

    BP = max(16, next_power_of_2(P))
    BN, BM, warps = TILE_TABLE[element_size, BP]
    return Tiles(BN=BN, BM=max(16, min(BM, next_power_of_2(m))), BP=BP, num_warps=warps,
                 PREC="tf32x3" if element_size == 4 else "ieee")


def check_fused(device: torch.device, dim: int | None = None) -> None:
    """Refuse the fused backend where it cannot run (no Triton, no CUDA, inputs of dimension
    ``dim`` = d + bias above :data:`MAX_DIM`), saying why."""
    if dim is not None and dim > MAX_DIM:
        raise InputError(f"backend 'fused' takes inputs of dimension d + bias <= {MAX_DIM}, got {dim}; "
                         f"use backend='torch'")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise InputError("backend 'fused' needs Triton (pip install triton); use backend='torch'") from None
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(f"backend 'fused' runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
                         f"not on {device.type!r}; use backend='torch'")


def fused_output(design, a: Tensor, W: Tensor, weights: Tensor, t: Tiles | None = None) -> Tensor:
    """``f = Σ_i weights_i φ(x_i)`` ``(R, m)`` for neurons ``a (R, K)``, ``W (R, K, P)``
    (the contract of :func:`dropdyn.engine.reference_output`); ``t`` replaces the tiles
    of :func:`tiles` (benchmarks/bench_tiles.py)."""
    from triton import cdiv

    from ._triton_step import CODES, forward_kernel

    R, K, P = W.shape
    m = design.Z.shape[0]
    t, chunks = t or tiles(P, m, W.element_size()), max(1, cdiv(K, CHUNK_NEURONS))
    partial = torch.empty(R, chunks, m, dtype=W.dtype, device=W.device)
    forward_kernel[(R * chunks * cdiv(m, t.BM),)](W.contiguous(), (a * weights).contiguous(), design.Z.contiguous(),
                                               partial, K, m, CHUNK_NEURONS, P, ACT=CODES[design.act.name],
                                               **t._asdict())
    return partial.sum(1)


def fused_descent(design, a: Tensor, W: Tensor, weights: Tensor, penalty: float = 0.0,
                  t: Tiles | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`dropdyn.model.descent`: for neurons ``a (R, K)``,
    ``W (R, K, P)`` and forward weights ``weights = F_i / n`` ``(R, K)``, the descent
    directions ``ga (R, K)``, ``gW (R, K, P)`` and the output ``f (R, m)`` (the squared
    loss's; the kernels take the residual f − y); ``t`` replaces the tiles of :func:`tiles`."""
    from triton import cdiv

    from ._triton_step import CODES, backward_kernel

    R, K, P = W.shape
    m = design.Z.shape[0]
    t = t or tiles(P, m, W.element_size())  # once, for both kernels
    f = fused_output(design, a, W, weights, t)
    r = f - design.y
    ga = torch.empty(R, K, dtype=W.dtype, device=W.device)
    gW = torch.empty(R, K, P, dtype=W.dtype, device=W.device)
    if K == 0:  # no neuron (every one dropped): nothing to launch
        return ga, gW, f
    pen = W.new_full((1,), penalty) if penalty else W  # a device scalar, read only where PENALTY
    backward_kernel[(R * cdiv(K, t.BN),)](W.contiguous(), a.contiguous(), design.Z.contiguous(), r, ga, gW, K, m,
                                        pen, P, ACT=CODES[design.act.name], PENALTY=bool(penalty), **t._asdict())
    return ga, gW, f
