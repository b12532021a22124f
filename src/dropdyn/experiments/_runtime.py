"""The engine's runtime settings, for the experiments that run :func:`dropdyn.simulate`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_choice
from ..lab.settings import Runtime, setting


@dataclass
class EngineRuntime(Runtime):
    """:class:`Runtime` and the particle engine's step, for experiments that run
    :func:`dropdyn.simulate` (its ``backend``)."""

    backend: str = setting("torch", "engine step: torch (reference) or fused (Triton kernels; CUDA, d + bias ≤ 128)")
    graph: bool = setting(False, "replay the unrecorded steps as one CUDA graph (CUDA; not phase IV's limit)")

    def check_runtime(self) -> None:
        super().check_runtime()
        if check_choice("backend", self.backend, ("torch", "fused")) == "fused":
            from ..fused import check_fused

            check_fused(torch.device(self.device))
        if self.graph:
            from ..graph import check_graph

            check_graph(torch.device(self.device))

    @property
    def engine(self) -> dict:
        """The :func:`dropdyn.simulate` arguments these settings fix: ``backend`` and ``graph``."""
        return dict(backend=self.backend, graph=self.graph)
