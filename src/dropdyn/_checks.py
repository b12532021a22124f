"""Validation at the API boundary: every check raises :class:`InputError` (a
``ValueError``) naming the argument and the offending value, so the CLI can print it as
one line — and tell it apart from a bug, which keeps its traceback."""

from __future__ import annotations

import math
import numbers
import os
import reprlib

import torch


class InputError(ValueError):
    """Bad input that a user can cause and fix: the CLI prints it in one line (exit code 2)."""


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 80, 80


def shown(value) -> str:
    """``repr(value)`` cut to a readable size (at most 200 characters) for an error message.
    A value from a file can be huge, or nested exponentially through YAML aliases (its full
    repr would exhaust memory)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def check_keep(keep, name: str = "keep") -> float:
    """Keep probability q ∈ (0, 1] (``name``: the setting, for the message)."""
    q = _real(name, keep, "a number in (0, 1]")
    if not (0.0 < q <= 1.0):
        raise InputError(f"{name} must be in (0, 1], got {shown(keep)}")
    return q


def _real(name: str, value, what: str) -> float:
    """``value`` as a float; bools, complex numbers and non-numbers are refused."""
    if isinstance(value, (bool, complex)) or (isinstance(value, torch.Tensor) and value.numel() != 1):
        raise InputError(f"{name} must be {what}, got {shown(value)}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be {what}, got {shown(value)}") from None


def check_positive(name: str, value) -> float:
    """A finite, strictly positive real (learning rates, time steps)."""
    v = _real(name, value, "a finite positive number")
    if not (math.isfinite(v) and v > 0.0):
        raise InputError(f"{name} must be a finite positive number, got {shown(value)}")
    return v


MAX_STEPS = 10**8  # a run of more steps is refused: at a millisecond a step, it would take days


def check_interval(name: str, value, text: str) -> float:
    """A finite number in the interval ``text``, such as ``"[0, 1)"``: its brackets say which
    ends belong to it (``∞`` for no upper end)."""
    low, high = (float(v.replace("∞", "inf")) for v in text[1:-1].split(","))
    v = _real(name, value, f"a number in {text}")
    inside = (low <= v if text[0] == "[" else low < v) and (v <= high if text[-1] == "]" else v < high)
    if not (math.isfinite(v) and inside):
        raise InputError(f"{name} must be a number in {text}, got {shown(value)}")
    return v


def check_steps(time: float, lr: float, where: str = "") -> int:
    """The steps of a run of ``time`` at step ``lr``, max(1, round(time/lr)), refused above
    :data:`MAX_STEPS` (``where``: the run's setting, for the message)."""
    steps = time / lr
    if not steps <= MAX_STEPS:
        raise InputError(f"time {time:g} at step τ = {lr:.3g}{where} is {steps:.3g} steps, more than the "
                         f"{MAX_STEPS:.0e} a run may take: shorten the time or enlarge the step")
    return max(1, round(steps))


def check_int(name: str, value, minimum: int) -> int:
    """An integer ≥ ``minimum`` (a Python or NumPy integer, or an integral float; bools and
    other floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise InputError(f"{name} must be an integer >= {minimum}, got {shown(value)}")
    v = int(value)
    if v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {shown(value)}")
    return v


def check_seed(seed) -> int:
    """A seed: an integer in [0, 2⁶³) (what ``torch.Generator.manual_seed`` accepts)."""
    v = check_int("seed", seed, 0)
    if v >= 2**63:
        raise InputError(f"seed must be an integer in [0, 2^63), got {shown(seed)}")
    return v


def check_memory(what: str, nbytes: float, device="cpu") -> None:
    """Refuse, before allocating it, what cannot fit in the memory of ``device`` (this
    machine's RAM, or the GPU's), naming how much it would need."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        total, where = torch.cuda.get_device_properties(dev).total_memory, "GPU memory"
    else:
        total, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory on this machine"
    if nbytes > total:
        raise InputError(f"{what} needs about {nbytes / 2**30:.3g} GiB, more than the {total / 2**30:.3g} GiB of "
                         f"{where}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """No NaN or ±inf anywhere in ``tensor``."""
    if not torch.is_floating_point(tensor):
        raise InputError(f"{name} must be a real floating-point tensor, got dtype {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InputError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_choice(name: str, value, choices) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise InputError(f"unknown {name} {shown(value)}; choose one of {', '.join(sorted(choices))}")
    return value


def check_device_dtype(device: str, dtype: str) -> None:
    """``device`` ∈ {cpu, cuda} (cuda only where available), ``dtype`` ∈ {float32, float64}."""
    check_choice("dtype", dtype, ("float32", "float64"))
    check_device(device)


def check_device(device) -> torch.device:
    """A torch device that exists here: the CPU, or a CUDA device where CUDA is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {shown(device)}; use 'cpu' or 'cuda'") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {shown(device)}; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    return dev


def check_widths(name: str, widths) -> list[int]:
    """The widths of a rate fit, sorted: at least two distinct integers ≥ 2."""
    values = [check_int(name, w, 2) for w in widths]
    if len(set(values)) < 2:
        raise InputError(f"a rate fit needs at least two distinct {name}, got {shown(widths)}")
    return sorted(set(values))
