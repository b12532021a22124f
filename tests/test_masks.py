"""Mask streams: moments against their formulas, replay, coupling."""

import math

import pytest
import torch

from dropdyn.masks import MaskStream, draw_masks, multipliers


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_multiplier_moments(q):
    """E[1 + η] = 1 and Var(η) = (1 − q)/q, within 5 standard errors."""
    N = 400_000
    m = multipliers(draw_masks(q, 1, (N,), seed=3)[0], q)
    var = (1 - q) / q
    assert abs(float(m.mean()) - 1.0) < 5 * math.sqrt(var / N)
    # standard error of a sample variance: sqrt((μ4 − σ⁴)/N) (μ4: 4th central moment), plus
    # the O(1/N) term that dominates when μ4 = σ⁴ (q = 1/2: a symmetric two-point law)
    mu4 = q * (1 / q - 1) ** 4 + (1 - q)
    assert abs(float(m.var()) - var) < 5 * math.sqrt((mu4 - var**2) / N) + 10 * (1 + var) / N
    assert set(torch.unique(m).tolist()) == {0.0, 1 / q}


def test_stream_is_replayable_and_seeded():
    a = MaskStream(0.5, (3, 100), seed=7).take(5)
    b = MaskStream(0.5, (3, 100), seed=7).take(5)
    c = MaskStream(0.5, (3, 100), seed=8).take(5)
    assert a.dtype == torch.bool and a.shape == (5, 3, 100)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # successive draws differ
    assert not torch.equal(a[0], a[1])
    assert MaskStream(0.5, (3, 100)).take(0).shape == (0, 3, 100)  # zero steps: an empty stack


def test_keep_one_keeps_everything():
    assert bool(MaskStream(1.0, (4, 50), seed=0).take(3).all())


def test_draw_masks_equals_stream():
    s = MaskStream(0.3, (20,), seed=5)
    assert torch.equal(draw_masks(0.3, 4, (20,), seed=5), torch.stack([s.next() for _ in range(4)]))


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), "x"])
def test_bad_keep(bad):
    with pytest.raises(ValueError, match="keep"):
        MaskStream(bad, (3,))
