"""``dropdyn.runs`` is :mod:`dropdyn.lab.index` (the name the docs and notebooks use)."""

import sys

from .lab import index

sys.modules[__name__] = index
