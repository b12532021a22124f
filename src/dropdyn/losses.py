"""The losses of the particle engine (docs/theory.md §1, "Losses"). A step needs only the
residual ∂ℓ/∂f at its (possibly thinned) output f, in place of the squared loss's f − y:

    loss           ℓ(f, y)                  ∂ℓ/∂f                  targets y          outputs K
    squared        ½ (f − y)²               f − y                  real               1
    logistic       log(1 + e^{−y f})        −y σ(−y f)             −1 or +1           1
    cross-entropy  logsumexp(f) − f_y       softmax(f) − e_y       class 0 … K − 1    K ≥ 2

The risk is the mean loss over samples, ``(1/m) Σ_j ℓ(f_j, y_j)``. Targets are held
*encoded*: real values for the first two, one-hot rows ``(m, K)`` for cross-entropy, so
that a subset of samples (a minibatch) is a subset of rows for every loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import InputError, check_choice, check_int

Tensor = torch.Tensor


@dataclass(frozen=True)
class Loss:
    """``value(f, Y)``: ℓ per sample ``(…, m)``; ``residual(f, Y)``: ∂ℓ/∂f, the shape of
    ``f`` (``(…, m)``, or ``(…, m, K)`` for cross-entropy); ``classes``: whether the targets
    are labels (and the outputs have an accuracy)."""

    name: str
    value: Callable[[Tensor, Tensor], Tensor]
    residual: Callable[[Tensor, Tensor], Tensor]
    classes: bool

    def risk(self, f: Tensor, Y: Tensor) -> Tensor:
        """The mean loss over samples: ``(…, m[, K]) → (…)``."""
        return self.value(f, Y).mean(-1)

    def accuracy(self, f: Tensor, Y: Tensor) -> Tensor | None:
        """The fraction of samples classified right (the sign of f, or its largest output),
        ``(…)``; None for the squared loss."""
        if not self.classes:
            return None
        right = f.argmax(-1) == Y.argmax(-1) if self.name == "cross-entropy" else torch.sign(f) == Y
        return right.to(f.dtype).mean(-1)


def _squared(f: Tensor, Y: Tensor) -> Tensor:
    r = f - Y
    return 0.5 * (r * r)


def _cross_entropy(f: Tensor, Y: Tensor) -> Tensor:
    return torch.logsumexp(f, -1) - (f * Y).sum(-1)


LOSSES: dict[str, Loss] = {
    "squared": Loss("squared", _squared, torch.sub, False),
    "logistic": Loss("logistic", lambda f, Y: torch.nn.functional.softplus(-Y * f),
                     lambda f, Y: -Y * torch.sigmoid(-Y * f), True),
    "cross-entropy": Loss("cross-entropy", _cross_entropy, lambda f, Y: torch.softmax(f, -1) - Y, True),
}


def get_loss(name: str) -> Loss:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    return LOSSES[check_choice("loss", name, LOSSES)]


def encode(loss: Loss, name: str, targets: Tensor, classes: int | None = None) -> tuple[Tensor, int]:
    """``targets (m,)`` as the loss holds them, and the number of outputs K: real values
    (squared), ±1 (logistic, refused otherwise), or class indices 0 … K − 1 turned into
    one-hot rows ``(m, K)`` (cross-entropy; K = ``classes``, default the largest label + 1,
    at least 2). ``name``: the argument, for messages."""
    if loss.name == "squared":
        return targets, 1
    if loss.name == "logistic":
        bad = (targets != 1) & (targets != -1)
        if bool(bad.any()):
            raise InputError(f"the logistic loss takes {name} of -1 or +1; got {float(targets[bad][0]):g} at index "
                             f"{int(bad.nonzero()[0])}")
        return targets, 1
    labels = targets.round()
    if bool((labels != targets).any()) or bool((targets < 0).any()):
        raise InputError(f"the cross-entropy loss takes {name} that are class indices 0, 1, …; got "
                         f"{float(targets[(labels != targets) | (targets < 0)][0]):g}")
    K = int(labels.max()) + 1 if classes is None else check_int("classes", classes, 2)
    if K < 2 or int(labels.max()) >= K:
        raise InputError(f"{name} hold class {int(labels.max())}, out of range for {K} classes" if K >= 2 else
                         f"the cross-entropy loss needs at least 2 classes; {name} hold only class 0 (give classes=)")
    return torch.nn.functional.one_hot(labels.long(), K).to(targets.dtype), K
