import os
import subprocess

import pytest
import torch

# Without a GPU, Triton kernels (dropdyn.fused) run under Triton's interpreter. The flag is
# read when Triton is first imported, so it is set here, before any test module imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def small_problem():
    """A small float64 problem: particles (7, 4), inputs (5, 3), targets (5,)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(7, 4, generator=g, dtype=torch.float64)
    Z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, generator=g, dtype=torch.float64)
    return X, Z, y


@pytest.fixture(autouse=True, scope="session")
def _one_thread_count():
    """Every call of the suite with torch's thread count of its start, whatever the load:
    a count chosen by load (dropdyn.threads) may change the last bits of a result between two
    calls that a test compares. tests/test_threads.py lifts it where it tests the choice."""
    from dropdyn.threads import available_cpus, set_threads

    set_threads(min(torch.get_num_threads(), len(available_cpus())))
    yield
    set_threads(None)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own folder, so the default store ``runs/`` is private to it."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=["compacted", "not compacted"])
def compaction(request, monkeypatch):
    """Dropout's step both ways: on its kept neurons only, and on all (below
    ``engine.COMPACT_MIN_WORK``, as the tests' small problems are by default)."""
    from dropdyn import engine

    monkeypatch.setitem(engine.COMPACT_MIN_WORK, "cpu", 0 if request.param == "compacted" else 2**62)
    return request.param == "compacted"


@pytest.fixture
def dropdyn_cli(capsys):
    """``dropdyn ARGS`` run in this process, as a ``CompletedProcess`` (exit code, stdout,
    stderr): the same ``main`` without a 2–3 s interpreter and torch start per call. The
    entry point itself (``python -m dropdyn.cli``) keeps its own subprocess tests."""
    from dropdyn.cli import main

    def call(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's --help
            code = e.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call
