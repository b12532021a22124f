"""The fused step: :func:`dropdyn.model.descent` computed by two Triton kernels that never
form the (width × m) feature matrices (``simulate(..., backend="fused")``).

The reference step materialises the pre-activations U = W Zᵀ, the features and their
slopes, each (width × m): at width 10⁶ and m = 1000 that is several GB of memory traffic
per step. The fused kernels (``_triton_step``) tile neurons × samples, recompute each tile's
pre-activations in registers, and reduce them at once: a forward reduction over neurons
gives the residual r (R, m), a backward reduction over samples gives each neuron's descent
direction. Memory traffic is the particles, the inputs and r.

It runs on CUDA devices with Triton installed, and on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment before Triton is first imported), which is how
the tests check it against the reference closed forms on machines without a GPU. Not yet
compiled or timed on a GPU: ``backend="torch"`` stays the default until it is.
"""

from __future__ import annotations

import os

import torch

from ._checks import InputError

Tensor = torch.Tensor
BLOCK_NEURONS, BLOCK_SAMPLES = 64, 64


def check_fused(device: torch.device) -> None:
    """Refuse the fused backend where it cannot run, saying why."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise InputError("backend 'fused' needs Triton (pip install triton); use backend='torch'") from None
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(f"backend 'fused' runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
                         f"not on {device.type!r}; use backend='torch'")


def fused_descent(design, a: Tensor, W: Tensor, weights: Tensor, penalty: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`dropdyn.model.descent`: for neurons ``a (R, K)``,
    ``W (R, K, P)`` and forward weights ``weights = F_i / n`` ``(R, K)``, the descent
    directions ``ga (R, K)``, ``gW (R, K, P)`` and the residual ``r (R, m)``."""
    from triton import cdiv

    from ._triton_step import CODES, backward_kernel, forward_kernel

    R, K, P = W.shape
    Z, y = design.Z, design.y
    m = Z.shape[0]
    act = CODES[design.act.name]
    W, Z = W.contiguous(), Z.contiguous()
    v = (a * weights).contiguous()
    r = torch.empty(R, m, dtype=W.dtype, device=W.device)
    forward_kernel[(R, cdiv(m, BLOCK_SAMPLES))](W, v, Z, y.contiguous(), r, K, m, P=P, ACT=act,
                                                  BN=BLOCK_NEURONS, BM=BLOCK_SAMPLES)
    ga = torch.empty(R, K, dtype=W.dtype, device=W.device)
    gW = torch.empty(R, K, P, dtype=W.dtype, device=W.device)
    backward_kernel[(R, cdiv(K, BLOCK_NEURONS))](W, a.contiguous(), Z, r, ga, gW, K, m, float(penalty), P=P,
                                                   ACT=act, BN=BLOCK_NEURONS, BM=BLOCK_SAMPLES)
    return ga, gW, r
