"""The run loop that both simulators share (:func:`dropdyn.simulate`,
:func:`dropdyn.simulate_sme`), each a :class:`Driver`: record at step 0, step, stop at a
divergence keeping the state of the step before, record on a cadence, show progress; and
the divergence watch that lets a GPU run read its divergence test only every few steps."""

from __future__ import annotations

import contextvars
import math
from typing import Any, Protocol

import torch

from ._checks import check_int

Tensor = torch.Tensor


class DivergenceWatch:
    """A simulator's divergence test, read by the host every ``every`` steps.

    Each step hands :meth:`keep` its verdict ``ok`` (a 0-dim bool tensor) with the new and
    the old state. With ``every == 1`` the host reads ``ok`` at once (one synchronisation per
    step, free on the CPU). Otherwise the device keeps the last good state
    (``torch.where``) and the first failed step, and the host reads them only when asked
    (``read``) or every ``every`` steps; a run is then the same, bit for bit, for any
    ``every``. Default ``every``: 16 on a GPU, where each read stalls the stream; 1 elsewhere.
    ``on_device``: keep the test on the device even with ``every == 1`` (a step captured in
    a CUDA graph may not read anything on the host; it calls :meth:`update` alone, and the
    host calls :meth:`read` after it).
    """

    def __init__(self, every: int | None, device, on_device: bool = False):
        device = torch.device(device)
        if every is None:
            every = 16 if device.type == "cuda" else 1
        self.every = check_int("check_every", every, 1)
        self.on_device = on_device or self.every > 1
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: no failed step yet

    def keep(self, k: int, ok: Tensor, new: tuple[Tensor, ...], old: tuple[Tensor, ...],
             read: bool) -> tuple[tuple[Tensor, ...], int | None]:
        """Step ``k``: returns the state to carry on with (``new`` while no step has failed,
        else the last good one) and the step that diverged (None while the host knows of
        none). ``read``: the host must look now (the step will be recorded)."""
        if not self.on_device:
            return (new, None) if bool(ok) else (old, k)
        return self.update(k, ok, new, old), self.read(k, read)

    def update(self, k: int | Tensor, ok: Tensor, new: tuple[Tensor, ...],
               old: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The device's half of :meth:`keep`, with no host read: note step ``k`` (an int, or
        a 0-dim long tensor counted on the device) if it is the first to fail, and return
        the state to carry on with."""
        clean = self.first_bad == 0
        self.first_bad.copy_(torch.where(clean & ~ok, k, self.first_bad))
        good = clean & ok
        return tuple(torch.where(good, x, y) for x, y in zip(new, old, strict=True))

    def read(self, k: int, read: bool) -> int | None:
        """The host's half: the first failed step (None if none), looked up if ``read`` or
        ``k`` is a multiple of ``every``, else None."""
        if not (read or k % self.every == 0):
            return None
        return int(self.first_bad) or None


def within(x: Tensor, limit: float) -> Tensor:
    """0-dim bool: every entry of ``x`` — a tensor with no negative entries (squares,
    absolute values), so no −inf — finite and ≤ ``limit``. NaN ≤ limit is false and a finite
    limit excludes +inf, so one comparison does it (a GPU runs ``torch.isfinite`` as four
    kernels, and a small step's time is its kernel launches)."""
    ok = (x <= limit).all()
    return ok if math.isfinite(limit) else ok & torch.isfinite(x).all()


def finite(*xs: Tensor) -> Tensor:
    """0-dim bool: every entry of the tensors ``xs`` finite, read off the sum of their sums —
    one pass each, where ``torch.isfinite(x).all()`` takes two: a NaN or an infinity makes
    the sum non-finite, and s − s is 0 exactly for a finite s (two 0-dim kernels, where
    ``isfinite`` takes four). So does finite entries' sum passing the dtype's largest value
    (entries of about 10³⁸ / numel in float32), a state that has diverged in any case: it
    counts as not finite."""
    s = xs[0].sum()
    for x in xs[1:]:
        s = s + x.sum()
    return (s - s) == 0


class Driver(Protocol):
    """A simulator as :func:`run_loop` drives it: state in, state out.

    ``start()`` is the state at step 0; ``advance(state, k, due)`` computes step k (``due``:
    it will be recorded) and returns the new state and None, or the state to keep and the
    step b ≤ k that diverged (the state of step b − 1: a simulator that reads the device only
    every few steps finds a divergence late); ``record(state, k)`` records the state at step
    k. Both simulators (:func:`dropdyn.simulate`, :func:`dropdyn.simulate_sme`) are drivers."""

    def start(self) -> Any: ...

    def advance(self, state: Any, k: int, due: bool) -> tuple[Any, int | None]: ...

    def record(self, state: Any, k: int) -> None: ...


def run_loop(driver: Driver, steps: int, *, record_every: int, progress=False,
             desc: str = "") -> tuple[Any, int | None]:
    """Steps k = 1 … ``steps`` of ``driver``. Records at step 0, every ``record_every`` steps,
    at the last step, and at the step before a divergence (no step after it is recorded).
    ``progress``: False, True (a bar for this loop), None (a bar once the loop has run
    :data:`AUTO_DELAY` seconds) or the bar of a larger run to advance, whose postfix then
    names this loop (``desc``). Returns the final state and the step that diverged, or None."""
    state = driver.start()
    driver.record(state, 0)
    last, diverged = 0, None
    shared = hasattr(progress, "update")  # a bar of a larger run, which owns it
    bar = progress if shared else progress_bar(steps, progress, desc)
    if shared and desc:
        bar.set_postfix_str(desc, refresh=False)
    for k in range(1, steps + 1):
        due = k % record_every == 0 or k == steps
        state, diverged = driver.advance(state, k, due)
        if diverged is not None:
            if last != diverged - 1:
                driver.record(state, diverged - 1)
            if bar is not None:  # the steps not taken: a larger run's bar still reaches its total
                bar.update(steps - k + 1)
            break
        if due:
            driver.record(state, k)
            last = k
        if bar is not None:
            bar.update(1)
    if bar is not None and not shared:
        bar.close()
    return state, diverged


AUTO_DELAY = 2.0  # seconds: a call shows its bar once it has run this long, unless told otherwise
# True inside an experiment's computation: the experiment owns the progress shown, so the
# library calls it makes show no bar of their own unless handed one
OWNED = contextvars.ContextVar("dropdyn_progress_owned", default=False)


def progress_bar(total: int, enabled: bool | None, desc: str):
    """A tqdm bar of ``total`` steps (see :func:`run_bar`), or None when disabled."""
    if enabled is False or total == 0 or (enabled is None and OWNED.get()):
        return None
    return run_bar(total, desc, enabled=enabled)


def run_bar(total: int, desc: str, *, enabled: bool | None = True, unit: str = "step"):
    """One tqdm bar for a whole run of ``total`` units: shown at once (``enabled=True``), once
    the run has lasted :data:`AUTO_DELAY` seconds (``None``: a long library call is never
    silent, a short one prints nothing), or a :class:`NoBar` (``False``). An experiment made
    of several parts advances it through each, and names the running part with
    ``set_description``."""
    if enabled is False:
        return NoBar(total)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5,
                delay=AUTO_DELAY if enabled is None else 0.0)


class NoBar:
    """A bar that shows nothing. Unlike a disabled tqdm bar it creates no lock: tqdm's is a
    multiprocessing semaphore, which a sweep worker ended by Ctrl-C would leak. It counts
    (``n`` of ``total``) as a bar does."""

    def __init__(self, total: int = 0):
        self.n, self.total = 0, total

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str, refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass
