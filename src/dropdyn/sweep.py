"""``dropdyn.sweep`` is :mod:`dropdyn.lab.sweep` (the name the docs and notebooks use)."""

import sys

from .lab import sweep

sys.modules[__name__] = sweep
