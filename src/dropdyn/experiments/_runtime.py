"""Settings the experiments share: the engine's runtime (for those that run
:func:`dropdyn.simulate`), the activation σ, widths and (learning rate, keep) pairs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_keep, check_positive, check_widths
from ..lab.settings import Check, Runtime, one_of, setting
from ..model import ACTIVATIONS


@dataclass
class EngineRuntime(Runtime):
    """:class:`Runtime` and the particle engine's step, for experiments that run
    :func:`dropdyn.simulate` (its ``backend``)."""

    backend: str = setting("torch", "engine step: torch (reference) or fused (Triton kernels; CUDA, d + bias ≤ 128)",
                           one_of("torch", "fused"))
    graph: bool = setting(False, "replay the unrecorded steps as one CUDA graph (CUDA; not phase IV's limit)")

    def __post_init__(self) -> None:
        """Each field checked, then the step and the graph against the device that runs them."""
        super().__post_init__()
        if self.backend == "fused":
            from ..fused import check_fused

            check_fused(torch.device(self.device))
        if self.graph:
            from ..graph import check_graph

            check_graph(torch.device(self.device))

    @property
    def engine(self) -> dict:
        """The :func:`dropdyn.simulate` arguments these settings fix: ``backend`` and ``graph``."""
        return dict(backend=self.backend, graph=self.graph)


def activation_setting(default: str = "tanh"):
    """The activation σ setting: one of :data:`dropdyn.model.ACTIVATIONS`."""
    return setting(default, "activation σ", one_of(*ACTIVATIONS))


def widths_setting(default, help: str):  # noqa: A002 - the word argparse uses
    """A list of widths for a rate fit: at least two distinct integers ≥ 2."""
    return setting(default, help, Check("at least two distinct integers >= 2", check_widths))


def pairs_setting(default, help: str):  # noqa: A002 - the word argparse uses
    """A list of (learning rate, keep) pairs (:data:`dropdyn.lab.settings.Pairs`): each rate
    a finite number > 0, each keep in (0, 1]."""
    def test(name, pairs):
        for lr, keep in pairs:
            check_positive(f"{name}' learning rate", lr)
            check_keep(keep, f"{name}' keep")

    return setting(default, help, Check("LR:KEEP pairs, comma-separated, LR > 0, KEEP in (0, 1]", test))
