"""One step of a run, captured once as a CUDA graph and replayed (``simulate(..., graph=True)``).

At small widths a GPU step is its kernel launches: at width 5,000 the reference dropout
step is some forty launches of a few µs of work each, and the host spends longer issuing
them than the GPU running them. A CUDA graph records the launches of one step once; each
replay issues them all with one call. What it replays must read and write the same
buffers every time and ask the host nothing, so :func:`dropdyn.simulate` runs a graphed
run on buffers updated in place, counts its steps on the device (given masks are picked
by that count), keeps its divergence test on the device
(:meth:`dropdyn.loop.DivergenceWatch.update`), does not compact dropout's kept neurons
(their count is a host read), and registers the mask generator with the graph, so that
each replay advances the mask stream exactly as an eager step does: the run is the same
with or without the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import InputError


def check_graph(device: torch.device) -> None:
    """Refuse ``graph=True`` where there is no CUDA graph to capture, saying why."""
    if device.type != "cuda":
        raise InputError(f"graph=True captures CUDA graphs: it needs a CUDA device, not {device.type!r}")


class StepGraph:
    """``body`` (no arguments, no result: it reads and writes tensors that outlive it, and
    never reads a value on the host), captured as a CUDA graph at the first call and
    replayed at every call, the first included. ``generators``: the CUDA generators it draws
    from, registered before the capture (each replay then advances them as a call of
    ``body`` would). Call ``body`` once eagerly before the first call: it loads the kernels
    (Triton compiles at a first launch, which a capture may not do)."""

    def __init__(self, body: Callable[[], None], generators: tuple[torch.Generator, ...] = ()):
        self.body, self.generators, self.graph = body, generators, None

    def __call__(self) -> None:
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            for g in self.generators:
                self.graph.register_generator_state(g)
            with torch.cuda.graph(self.graph):
                self.body()
        self.graph.replay()
