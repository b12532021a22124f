"""The library's thread choice (dropdyn.threads): the free physical cores, the caller's
count respected and given back, an explicit count winning, nested calls keeping theirs."""

import pytest
import torch

import dropdyn
from dropdyn import InputError, threads


@pytest.fixture
def auto(monkeypatch):
    """dropdyn chooses (the suite otherwise fixes one count), with a fake machine: 4 physical
    cores, other processes busy on ``load`` of them."""
    monkeypatch.setattr(threads, "_FIXED", [None])
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    monkeypatch.setattr(threads, "available_cpus", lambda: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", before)  # the caller has not set a count
    load = {"value": 0.0}
    monkeypatch.setattr(threads, "others_load", lambda: load["value"])
    yield load
    torch.set_num_threads(before)


@pytest.mark.parametrize("load, want", [(0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (3.0, 1), (9.0, 1)])
def test_the_default_takes_the_cores_other_processes_leave(auto, load, want):
    auto["value"] = load
    assert threads.default_threads() == want == threads.chosen()


def test_without_proc_stat_own_cpu_use_is_not_another_process(monkeypatch):
    monkeypatch.setattr(threads, "_LAST", [None])
    monkeypatch.setattr(threads, "busy_seconds", lambda cpus: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "own_load", lambda: 2.0)  # this process ran 2 cores for the last minute
    assert threads.others_load() == 1.0


def test_a_busy_process_on_one_cpu_is_measured_and_a_measurement_is_reused(monkeypatch):
    """A process spinning on one of this process's CPUs shows as about one CPU taken (this
    process's own time is not counted); the measurement is reused within KEEP seconds."""
    import subprocess
    import sys

    cpus = sorted(threads.available_cpus())
    if threads.busy_seconds(set(cpus)) is None:
        pytest.skip("no /proc/stat here")
    monkeypatch.setattr(threads, "_LAST", [None])
    monkeypatch.setattr(threads, "SAMPLE", 0.5)
    code = f"import os, time; os.sched_setaffinity(0, {{{cpus[0]}}}); t = time.time()\nwhile time.time() - t < 5: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        import time

        time.sleep(0.5)  # (its interpreter starting)
        busy = threads.others_load()
        assert 0.6 < busy, busy
        assert threads.others_load() == busy  # reused, not measured again
    finally:
        spinner.kill()
        spinner.wait()


def test_own_load_is_this_process_cpu_rate():
    import time

    threads._OWN.clear()
    assert threads.own_load() == 0.0  # one sample: no interval yet
    t0 = time.monotonic()
    x = torch.randn(300, 300, dtype=torch.float64)
    while time.monotonic() - t0 < 1.3:
        x = (x @ x).tanh()
    rate = threads.own_load()
    assert 0.3 < rate <= len(threads.available_cpus()) + 0.1, rate


def test_a_call_takes_its_count_and_gives_the_callers_back(auto):
    auto["value"] = 3.0  # one core free
    X, Z, y = torch.randn(30, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64), torch.randn(8)
    before = torch.get_num_threads()
    assert dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=2).info["threads"] == 1
    assert dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=2, threads=2).info["threads"] == 2  # explicit
    assert torch.get_num_threads() == before
    torch.set_num_threads(3)  # the caller's own count is kept
    assert dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=2).info["threads"] == 3


def test_nested_calls_keep_the_outer_count(auto):
    with threads.using(2) as n:
        auto["value"] = 9.0  # the machine got busy meanwhile: the inner call keeps the run's count
        with threads.using() as inner:
            assert n == inner == torch.get_num_threads() == 2


def test_set_threads_fixes_every_later_call(auto):
    threads.set_threads(1)
    assert threads.chosen() == 1 and torch.get_num_threads() == 1
    threads.set_threads(None)
    assert threads.chosen() == 4


@pytest.mark.parametrize("bad, match", [(0, "threads must be an integer >= 1"), (1.5, "threads must be an integer"),
                                        (9, "at most the 8 CPU"), ("2", "threads must be an integer")])
def test_bad_counts_are_refused(auto, bad, match):
    with pytest.raises(InputError, match=match):
        threads.chosen(bad)


def test_the_command_refuses_more_threads_than_cpus(dropdyn_cli):
    p = dropdyn_cli("phase", "--width", "100", "--lr", "0.1", "--keep", "0.5", "--threads", "100000")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "CPU(s) this process may use" in p.stderr
