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


def test_the_package_face_shows_only_what_it_names():
    """``import dropdyn``: every public name is in ``__all__`` (no helper of the package's own
    leaks, such as importlib or its module list), and every name in ``__all__`` resolves."""
    import subprocess
    import sys

    # a fresh process, where no submodule has been imported yet
    code = ("import dropdyn; print(sorted(n for n in dir(dropdyn) if not n.startswith('_') and n not in "
            "dropdyn.__all__)); print(all(getattr(dropdyn, n) is not None for n in dropdyn.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"], out
