"""dropdyn.reuse_freed_memory: large freed tensors are reused, not page-faulted in afresh."""

import subprocess
import sys

import pytest

from dropdyn.lab import host as allocator

SCRIPT = r"""
import resource, sys, torch, dropdyn
took = dropdyn.reuse_freed_memory()
x = torch.ones(2**24)  # 64 MiB: above glibc's largest adaptive mmap threshold (32 MiB)
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(2**24)
    del x
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    took, faults = p.stdout.split()
    if took != "True":
        pytest.skip("this C library takes no mallopt setting (not glibc)")
    # glibc's defaults map each tensor afresh: 163,850 faults here (10 × 16,384 with 4 KiB pages);
    # reused, 16,384 (one tensor's pages, once)
    assert int(faults) <= 2 * 2**26 // 4096, faults


def test_the_command_sets_it_for_runs(monkeypatch, dropdyn_cli, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    assert dropdyn_cli("phase", "--width", 10, "--lr", 1, "--keep", 0.5).returncode == 0
    assert calls == []
    assert dropdyn_cli("run", "teacher-student", "--width", 5, "--steps", 2, "--records", 1, "--out",
                       tmp_path / "run").returncode == 0
    assert calls == [1]


def test_a_sweep_point_sets_it_in_its_own_process(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    task = {"experiment": "teacher-student", "config": {"width": 5, "steps": 2, "records": 1}, "key": "k",
            "root": str(tmp_path), "sweep": None, "threads": 1}
    from dropdyn import sweep

    assert sweep.run_point(task)["status"] == "complete" and calls == [1]


@pytest.mark.parametrize("value, applied", [(None, True), ("", True), ("0", True), ("1", False), ("yes", False)])
def test_the_environment_can_keep_glibcs_defaults(monkeypatch, value, applied):
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    if value is None:
        monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    else:
        monkeypatch.setenv(allocator.OPT_OUT, value)
    assert allocator.configure() is applied and calls == ([1] if applied else [])
