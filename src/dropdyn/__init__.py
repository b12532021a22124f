"""dropdyn: the dynamics of dropout training, simulated and measured.

The working set is here: ``simulate`` (dropout and its variants on mean-field two-layer
networks, for the squared, logistic and cross-entropy losses, full batch or minibatch),
``simulate_limit``, ``classify`` and ``Phase`` (the phase diagram), ``simulate_sme`` and
``noise_covariance`` (the SMEs), ``alignment`` (noise geometry of any ``torch.nn`` model),
the metrics, the data, and ``run``/``load`` for experiments. Every
module is reachable from here too (``dropdyn.phase``, ``dropdyn.sme``, …), imported on
first use. The mathematics and names: docs/theory.md.
"""

from importlib import import_module as _import_module

from ._checks import InputError
from ._version import __version__
from .data import mean_field_init, teacher_student
from .engine import VARIANTS, SimulationResult, simulate
from .lab.experiment import run
from .lab.host import reuse_freed_memory
from .lab.store import load
from .limits import simulate_limit
from .masks import MaskStream, draw_masks, multipliers
from .metrics import output_gap, particle_distance, wasserstein2
from .noise_geometry import alignment
from .phase import Phase, classify
from .sme import noise_covariance
from .sme_dynamics import simulate_sme

_MODULES = ("curvature", "data", "diagnostics", "engine", "experiments", "lab", "limits", "loop", "losses", "masks",
            "metrics", "model", "nets", "noise_geometry", "phase", "runs", "sme", "sme_dynamics", "sweep", "threads")

__all__ = ["VARIANTS", "InputError", "MaskStream", "Phase", "SimulationResult", "alignment", "classify", "draw_masks",
           "mean_field_init", "multipliers", "noise_covariance", "output_gap", "particle_distance",
           "reuse_freed_memory", "run", "simulate", "simulate_limit", "simulate_sme", "teacher_student", "wasserstein2",
           "load", "__version__", *_MODULES]


def __getattr__(name: str):
    if name in _MODULES:
        return _import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dropdyn' has no attribute {name!r}")
