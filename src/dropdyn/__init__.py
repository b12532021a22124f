"""dropdyn: the dynamics of dropout training, simulated and measured.

``dropdyn.simulate`` runs gradient descent with dropout (and its variants RaM,
forward-only noise, penalty GD, GD) on mean-field two-layer networks; see THEORY.md.
"""

from .engine import VARIANTS, SimulationResult, simulate
from .masks import MaskStream, draw_masks, multipliers

__version__ = "0.1.0"

__all__ = ["VARIANTS", "MaskStream", "SimulationResult", "draw_masks", "multipliers", "simulate", "__version__"]
