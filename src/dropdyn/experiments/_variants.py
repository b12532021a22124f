"""Run the four variants of a comparison (dropout, RaM, penalty GD, GD) from one start."""

from __future__ import annotations

import torch

from ..engine import SimulationResult, simulate

VARIANTS = ("dropout", "ram", "penalty", "gd")
COLORS = {"dropout": "C3", "ram": "C0", "penalty": "C2", "gd": "k"}
LABELS = {"dropout": "dropout", "ram": "RaM (same masks)", "penalty": "penalty GD", "gd": "GD"}
STYLES = {"dropout": "-", "ram": "-", "penalty": "--", "gd": "-"}


def run_variants(X0: torch.Tensor, split, *, lr: float, keep: float, steps: int, records: int, activation: str,
                 seed: int, device: str, dtype: torch.dtype, snapshots: bool = False,
                 progress: bool = False) -> dict[str, SimulationResult]:
    """Each variant from ``X0`` on ``split`` (``inputs``, ``targets``, ``test_inputs``,
    ``test_targets``); dropout and RaM share one mask stream (``seed``). Outputs are
    recorded on the test inputs; with ``snapshots``, dropout's and RaM's particles too."""
    every = max(1, steps // records)
    snap = every if snapshots else None
    return {
        v: simulate(v, X0, split.inputs, split.targets, lr=lr, keep=keep, steps=steps, activation=activation,
                    seed=seed, record_every=every, test_inputs=split.test_inputs, test_targets=split.test_targets,
                    probe_inputs=split.test_inputs, snapshot_every=snap if v in ("dropout", "ram") else None,
                    device=device, dtype=dtype, progress=progress)
        for v in VARIANTS
    }
