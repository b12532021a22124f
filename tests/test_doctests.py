"""The examples in the public functions' docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["dropdyn.engine", "dropdyn.sme_dynamics", "dropdyn.phase", "dropdyn.limits", "dropdyn.metrics",
           "dropdyn.data", "dropdyn.sme", "dropdyn.noise_geometry", "dropdyn.masks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    import torch

    with torch.random.fork_rng(devices=[]):  # the alignment example seeds the global generator
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        res = doctest.testmod(importlib.import_module(name), optionflags=flags)
    assert res.attempted > 0 and res.failed == 0
