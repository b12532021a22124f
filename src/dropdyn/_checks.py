"""Validation at the API boundary: every check raises ``ValueError`` naming the
argument and the offending value, so the CLI can print it as one line."""

from __future__ import annotations

import math

import torch


def check_keep(keep) -> float:
    """Keep probability q ∈ (0, 1]."""
    try:
        q = float(keep)
    except (TypeError, ValueError):
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}") from None
    if not (0.0 < q <= 1.0):
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    return q


def check_positive(name: str, value) -> float:
    """A finite, strictly positive real (learning rates, time steps)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def check_int(name: str, value, minimum: int) -> int:
    """An integer ≥ ``minimum`` (bools and non-integral floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """No NaN or ±inf anywhere in ``tensor``."""
    if not torch.is_floating_point(tensor):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_choice(name: str, value, choices) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(sorted(choices))}")
    return value


def check_device_dtype(device: str, dtype: str) -> None:
    """``device`` ∈ {cpu, cuda} (cuda only where available), ``dtype`` ∈ {float32, float64}."""
    check_choice("dtype", dtype, ("float32", "float64"))
    check_choice("device", device, ("cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")


def parse_floats(name: str, text) -> list[float]:
    """``"0.5,0.2"`` → ``[0.5, 0.2]``; a non-empty comma-separated list of numbers."""
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{name} must not be empty")
    return vals


def parse_digit_pair(text) -> tuple[int, int]:
    """``"4,9"`` → ``(4, 9)``: two MNIST digits."""
    try:
        d = tuple(int(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"digits must be two digits like '4,9', got {text!r}") from None
    if len(d) != 2:
        raise ValueError(f"digits must be two digits like '4,9', got {text!r}")
    return d
