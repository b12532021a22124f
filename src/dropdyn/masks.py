"""Dropout masks (docs/theory.md §1): seeded, replayable, shareable streams.

At each step every neuron keeps (``True``) with probability ``q`` and its multiplier is
``1 + η = 1/q`` if kept and ``0`` otherwise, so ``E[1 + η] = 1`` and
``Var(η) = (1 − q)/q``. A stream owns one ``torch.Generator``: the same seed, shape and
device give the same masks, so two variants run with one seed are *coupled*.
"""

from __future__ import annotations

import math

import torch

from ._checks import InputError, check_int, check_keep, check_memory, check_seed


class MaskStream:
    """Bernoulli(q) keep-masks of shape ``shape`` (e.g. ``(replicas, width)``), one per
    call of :meth:`next`, drawn from a generator seeded with ``seed`` — or from
    ``generator`` itself, when given (it is then advanced)."""

    def __init__(self, keep: float, shape: tuple[int, ...], seed: int = 0, device="cpu",
                 generator: torch.Generator | None = None):
        self.keep = check_keep(keep)
        try:
            self.shape = tuple(check_int("mask shape entry", n, 0) for n in shape)
        except TypeError:
            raise InputError(f"shape must be a tuple of sizes, got {shape!r}") from None
        if generator is None:
            seed = check_seed(seed)
        self.device = torch.device(device) if generator is None else generator.device
        self.generator = generator if generator is not None else torch.Generator(device=self.device).manual_seed(
            int(seed))

    def next(self) -> torch.Tensor:
        """The next mask: a bool tensor of ``shape`` (``True`` = kept)."""
        if self.keep == 1.0:
            return torch.ones(self.shape, dtype=torch.bool, device=self.device)
        u = torch.rand(self.shape, generator=self.generator, dtype=torch.float64, device=self.device)
        return u < self.keep

    def take(self, steps: int) -> torch.Tensor:
        """The next ``steps`` masks stacked: ``(steps, *shape)``."""
        steps = check_int("steps", steps, 0)
        check_memory(f"{steps:,} masks of shape {self.shape}", steps * math.prod(self.shape), self.device)
        if steps == 0:
            return torch.empty((0, *self.shape), dtype=torch.bool, device=self.device)
        return torch.stack([self.next() for _ in range(steps)])


def draw_masks(keep: float, steps: int, shape: tuple[int, ...], seed: int = 0, device="cpu"):
    """``(steps, *shape)`` keep-masks: the same ones :func:`dropdyn.simulate` draws with
    this ``seed`` (pass them as ``masks=`` to couple runs explicitly).

    >>> m = draw_masks(0.5, steps=1000, shape=(200,), seed=3)
    >>> m.shape, m.dtype, abs(m.double().mean().item() - 0.5) < 0.01
    (torch.Size([1000, 200]), torch.bool, True)
    """
    return MaskStream(keep, shape, seed, device).take(steps)


def multipliers(mask: torch.Tensor, keep: float, dtype=torch.float64) -> torch.Tensor:
    """``1 + η = mask / q``: ``1/q`` where kept, ``0`` where dropped."""
    return mask.to(dtype) * (1.0 / check_keep(keep))
