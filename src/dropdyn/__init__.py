"""dropdyn: the dynamics of dropout training, simulated and measured.

``dropdyn.simulate`` runs gradient descent with dropout (and its variants RaM,
forward-only noise, penalty GD, GD) on mean-field two-layer networks; see docs/theory.md.
Every module is reachable from here (``dropdyn.phase``, ``dropdyn.sme``, …), imported on
first use so that ``import dropdyn`` stays light.
"""

import importlib

from ._checks import InputError
from .engine import VARIANTS, SimulationResult, simulate
from .masks import MaskStream, draw_masks, multipliers

__version__ = "0.1.0"

MODULES = ("config", "data", "diagnostics", "engine", "experiments", "limits", "masks", "metrics", "model", "nets",
           "phase", "report", "runs", "sme", "sme_dynamics", "store", "sweep")

__all__ = ["VARIANTS", "InputError", "MaskStream", "SimulationResult", "draw_masks", "multipliers", "simulate",
           "__version__", *MODULES]


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dropdyn' has no attribute {name!r}")
