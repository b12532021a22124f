"""Faults, bad input and hostile files: one line and exit code 2 for what a user can cause,
nothing outside the store touched, the index a cache that heals, no run lost or overwritten."""

import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dropdyn
import dropdyn.lab.report
from dropdyn.cli import main
from dropdyn.runs import RunIndex

TS = ["--width", "20", "--steps", "5", "--no-progress"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def one_line(p, match):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and match in p.stderr, p.stderr


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "teacher-student", *TS, "--store", "S"]) == 0
    return tmp_path / "S"


# --- security -------------------------------------------------------------------------------------------------

def test_report_never_turns_a_file_name_into_markup(store, tmp_path):
    run = next(store.glob("teacher-student/*"))
    evil = "<img src=x onerror=document.body.setAttribute('data-pwned','1')>.png"
    (run / evil).write_bytes(b"x")  # not a PNG: the page's script reports it as a figure that failed to load
    page = dropdyn.lab.report.write_report(run).read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page
    assert "insertAdjacentHTML" not in page and "innerHTML" not in page
    if CHROMIUM:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'prof'}", "--virtual-time-budget=5000", "--dump-dom",
                              (run / "report.html").resolve().as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
        assert 'data-loaded="' in dom and 'data-pwned="1"' not in dom  # the attribute was never set
        assert "figure failed to load: &lt;img src=x" in dom  # the name shown as text


def test_cifar_loader_executes_nothing(tmp_path):
    from dropdyn.data import cifar10, load_cifar_batch
    from test_experiments_small import fake_cifar

    folder = fake_cifar(tmp_path / "ok", per_batch=3)
    assert cifar10(str(folder))[0].shape == (15, 3, 32, 32)
    for proto in (2, 4, 5):  # every pickle protocol numpy arrays come in
        p = tmp_path / f"b{proto}"
        p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=proto))
        assert load_cifar_batch(p)[b"labels"] == [1, 2]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = fake_cifar(tmp_path / "bad", per_batch=3) / "cifar-10-batches-py"
    (bad / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match=r"data_batch_2: not a CIFAR-10 batch file .*posix.system|os.system"):
        cifar10(str(bad))
    assert not marker.exists()
    (bad / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="data_batch_2: not a CIFAR-10 batch file"):
        cifar10(str(bad))


def test_runs_rm_and_report_stay_inside_the_store(store, tmp_path, dropdyn_cli):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    (victim / "config.json").write_text(json.dumps({"experiment": "teacher-student", "config": {}}))
    with sqlite3.connect(store / "index.sqlite") as con:
        con.execute("INSERT INTO runs (id, key, experiment, params, status, summary) VALUES "
                    "('../victim', 'k', 'teacher-student', '{}', 'complete', '{}')")
    p = dropdyn_cli("runs", "rm", "../victim", "--store", str(store))
    assert p.returncode == 0 and "index row only" in p.stdout
    assert (victim / "precious").read_text() == "keep me"
    assert "victim" not in dropdyn.lab.report.write_report(store).read_text()
    spec = store / "sweeps" / "evil"
    spec.mkdir(parents=True)
    (spec / "sweep.json").write_text(json.dumps({"experiment": "teacher-student", "name": "evil", "base": {},
                                                 "points": [{}], "keys": ["../../victim"]}))
    one_line(dropdyn_cli("report", str(spec)), "not a dropdyn sweep file")


def test_force_replaces_only_run_folders(tmp_path, dropdyn_cli):
    v = tmp_path / "V"
    (v / "sub").mkdir(parents=True)
    (v / "sub" / "f").write_text("x")
    one_line(dropdyn_cli("run", "teacher-student", *TS, "--out", str(v), "--force"), "not one")
    assert (v / "sub" / "f").read_text() == "x"
    run = tmp_path / "R"
    assert dropdyn_cli("run", "teacher-student", *TS, "--out", str(run)).returncode == 0
    assert dropdyn_cli("run", "teacher-student", *TS, "--out", str(run), "--force", "--seed", "3").returncode == 0
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 3


# --- the index is a cache of the folders ----------------------------------------------------------------------

@pytest.mark.parametrize("params, summary", [("garbage", "{}"), ("[1]", "{}"), ("{}", "[" * 100_000)])
def test_an_index_with_damaged_rows_is_rebuilt(store, tmp_path, capsys, params, summary):
    """A readable SQLite file whose rows do not decode (edited by hand, or by another tool)."""
    shutil.copytree(store, tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "index.sqlite") as con:
        con.execute("UPDATE runs SET params = ?, summary = ?", (params, summary))
    con.close()
    rows = RunIndex(tmp_path / "s").rows()
    assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["params"]["width"] == 20
    err = capsys.readouterr().err
    assert "holds an unreadable row" in err and "rebuilt the index" in err and err.count("\n") == 1
    assert list((tmp_path / "s").glob("index.sqlite.corrupt-*"))
    again = RunIndex(tmp_path / "s").rows()  # from the rebuilt index, with no notice
    assert [(r["id"], r["status"], r["params"]) for r in again] == [(r["id"], r["status"], r["params"]) for r in rows]
    assert capsys.readouterr().err == ""


def test_missing_or_corrupt_index_is_rebuilt(store, dropdyn_cli):
    for f in store.glob("index.sqlite*"):
        f.unlink()
    p = dropdyn_cli("runs", "list", "--store", str(store))
    assert p.returncode == 0 and "1 run(s)" in p.stdout
    (store / "index.sqlite").write_bytes(os.urandom(4096))
    p = dropdyn_cli("runs", "list", "--store", str(store))
    assert p.returncode == 0 and "1 run(s)" in p.stdout and p.stderr.count("\n") == 1 and "rebuilt" in p.stderr
    assert list(store.glob("index.sqlite.corrupt-*"))
    (store / "index.sqlite").write_bytes(os.urandom(4096))
    p = dropdyn_cli("run", "teacher-student", *TS, "--store", str(store))
    assert p.returncode == 0 and len(RunIndex(store).rows(status="complete")) == 2
    p = dropdyn_cli("runs", "reindex", "--store", str(store))
    assert p.returncode == 0 and "reindexed 2 run(s)" in p.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes read-only folders anyway")
def test_read_only_store_can_be_listed(store, dropdyn_cli):
    try:
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        p = dropdyn_cli("runs", "list", "--store", str(store))
        assert p.returncode == 0 and "1 run(s)" in p.stdout
    finally:
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_an_index_it_may_not_write_is_read_read_only(store, monkeypatch):
    """Where the index file is not writable, rows come from a read-only connection and the
    read-write one (which would create, migrate or rebuild the file) is never opened; where
    no index exists yet, a writable store gets one."""
    import dropdyn.runs as runs

    index = store / "index.sqlite"
    assert RunIndex(store).rows() and index.exists()
    real_access = os.access
    monkeypatch.setattr(runs.os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode)
                        if Path(p) == index else real_access(p, mode))

    def no_writes(self):
        raise AssertionError("opened the index read-write")

    with monkeypatch.context() as m:
        m.setattr(RunIndex, "_connect", no_writes)
        rows = RunIndex(store).rows()
    assert len(rows) == 1 and rows[0]["status"] == "complete"
    index.unlink()
    assert len(RunIndex(store).rows()) == 1 and index.exists()  # a missing index is no obstacle: it is built


@pytest.mark.parametrize("fails, error, expect", [(2, "database is locked", "written"),
                                                  (1, "database table is busy", "written"),
                                                  (5, "database is locked", "raised"),
                                                  (1, "disk I/O error", "raised")])
def test_a_locked_index_is_retried_and_anything_else_raised(store, monkeypatch, fails, error, expect):
    """A write whose transaction cannot begin because the database is locked or busy is
    retried after 0.2 s, 0.4 s, … up to 5 attempts; any other error is raised at once."""
    waits = []
    monkeypatch.setattr("dropdyn.runs.time.sleep", waits.append)
    real = RunIndex._connect
    attempts = []

    class Refusing:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if sql == "BEGIN IMMEDIATE" and len(attempts) < fails:
                attempts.append(sql)
                raise sqlite3.OperationalError(error)
            return self.con.execute(sql, *args)

        def close(self):
            self.con.close()

    monkeypatch.setattr(RunIndex, "_connect", lambda self: Refusing(real(self)))
    index = RunIndex(store)
    if expect == "written":
        index.fail("x/1", "k", "x", {}, "boom")
        assert waits == pytest.approx([0.2 * (i + 1) for i in range(fails)])
        monkeypatch.setattr(RunIndex, "_connect", real)
        assert index.status("x/1") == "failed"
    else:
        with pytest.raises(sqlite3.OperationalError, match=error):
            index.fail("x/1", "k", "x", {}, "boom")
        retried = 4 if "locked" in error else 0
        assert waits == pytest.approx([0.2 * (i + 1) for i in range(retried)])
        monkeypatch.setattr(RunIndex, "_connect", real)
        assert index.status("x/1") is None


def test_reads_fall_back_to_the_folders(store, monkeypatch):
    """Where no index can be read (read-only store, say), the folders answer."""
    monkeypatch.setattr(RunIndex, "_read", lambda self, sql, args=(): None)
    rows = RunIndex(store).rows()
    assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["summary"]["alpha"] == 2.0


def test_states_are_true_and_partials_of_dead_processes_go(tmp_path, dropdyn_cli):
    """A killed `dropdyn run`: its row is running while it runs, failed once its process is gone, and
    its hidden partial folder is removed by the next run."""
    store = tmp_path / "S"
    proc = subprocess.Popen([sys.executable, "-m", "dropdyn.cli", "run", "teacher-student", "--width", "3000",
                             "--steps", "100000", "--store", str(store), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(store.glob("teacher-student/.*.partial-*")) and time.time() < deadline:
        time.sleep(0.2)
    assert [r["status"] for r in RunIndex(store).rows()] == ["running"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = RunIndex(store).rows()
    assert rows[0]["status"] == "failed" and "ended without finishing" in rows[0]["error"]
    assert list(store.glob("teacher-student/.*.partial-*"))
    assert dropdyn_cli("run", "teacher-student", *TS, "--store", str(store)).returncode == 0
    assert not list(store.glob("teacher-student/.*.partial-*"))
    assert main(["run", "teacher-student", *TS, "--store", str(store / "x"), "--out", str(tmp_path / "bad"),
                 "--lr", "-1"]) == 2  # refused before any row is written
    assert not (store / "x").exists()


def test_concurrent_writers_never_overwrite_a_complete_folder(tmp_path):
    from dropdyn.lab.store import RunFolder

    out = tmp_path / "run"
    first, second = RunFolder(out), RunFolder(out)  # both checked before either finished
    with first as f:
        f.write_json("config.json", {"experiment": "x", "config": {"who": 1}})
    with pytest.raises(ValueError, match="completed by another process"):
        with second as f:
            f.write_json("config.json", {"experiment": "x", "config": {"who": 2}})
    assert json.loads((out / "config.json").read_text())["config"]["who"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no partial folder left behind


def test_two_identical_runs_in_one_second_get_two_folders(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "dropdyn.cli", "run", "teacher-student", *TS, "--store",
                               str(tmp_path / "S")], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] != outs[1]
    assert len(RunIndex(tmp_path / "S").rows(status="complete")) == 2


def test_overlapping_sweeps_compute_each_point_once(tmp_path):
    from dropdyn.sweep import make_sweep, run_point, run_sweep

    sweep = make_sweep({"experiment": "teacher-student", "base": {"width": 20, "steps": 5}, "grid": {"seed": [1]}})
    root = tmp_path / "S"
    index = RunIndex(root)
    run_id, key = sweep.run_id(0), sweep.keys[0]
    # another live process claimed the point: this sweep waits for its folder instead of computing it
    index.start(run_id, key, sweep.experiment, sweep.configs[0])
    with sqlite3.connect(index.path) as con:
        con.execute("UPDATE runs SET pid = ? WHERE id = ?", (os.getppid(), run_id))
    import threading

    def other_process_finishes():
        time.sleep(1.5)
        dropdyn.experiments.teacher_student.run(
            dropdyn.experiments.teacher_student.Config(**sweep.configs[0]), root / run_id)

    t = threading.Thread(target=other_process_finishes)
    t.start()
    res = run_sweep(sweep, root)
    t.join()
    assert res.outcomes[key] == {"key": key, "status": "complete", "skipped": True}
    assert run_point({"experiment": sweep.experiment, "config": sweep.configs[0], "key": key, "root": str(root),
                      "sweep": None})["skipped"]


def test_pool_workers_exit_when_the_driver_is_killed(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys\nfrom dropdyn.sweep import make_sweep, run_sweep\n"
        "s = make_sweep({'experiment': 'teacher-student', 'base': {'width': 3000, 'steps': 100000},"
        " 'grid': {'seed': [1, 2]}})\n"
        f"run_sweep(s, {str(tmp_path / 'S')!r}, executor='processes', workers=2)\n")
    driver = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 90
    children = []
    while time.time() < deadline and len(children) < 2:
        time.sleep(0.5)
        children = _children(driver.pid)
    assert len(children) >= 2
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.5)
    assert not any(_alive(c) for c in children)


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.exists() and st.read_text().split()[2] == "Z")


# --- one line and exit code 2 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    (["run", "teacher-student", "--width", "100000000000"], "GiB, more than the"),
    (["run", "teacher-student", "--out", "afile"], "'afile' is a file"),
    (["run", "teacher-student", "--store", "afile"], "'afile' is a file"),
    (["run", "teacher-student", "--config", "dup.yaml"], "duplicate key 'width'"),
    (["run", "teacher-student", "--config", "latin.yaml"], "config file latin.yaml: not UTF-8 text"),
    (["run", "teacher-student", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["run", "teacher-student", "--seed", "99999999999999999999999"], "setting 'seed' must fit in 64 bits"),
    (["run", "teacher-student", "--seed", "1e23"], "setting 'seed' must fit in 64 bits"),
    (["run", "teacher-student", "--seed", "1.5"], "argument --seed: invalid integer value: '1.5'"),
    (["run", "convergence", "--c-keep", "2"], "at width 250 the family gives q = 0.1265"),
    (["run", "convergence", "--widths", ""], "setting 'widths' must not be empty"),
    (["run", "paper-mnist", "--batch-size", "100000", "--width", "10", "--steps", "2"],
     "batch_size 100000 exceeds the 600 training samples"),
    (["run", "paper-mnist", "--digits", "4,4"], "digits must be two different digits 0..9, got 4,4"),
    (["run", "paper-mnist", "--full"], "full is the paper's size on the full MNIST"),
    (["run", "convergence", "--widths", "300"], "at least two distinct widths, got (300,)"),
    (["run", "mnist-binary", "--source", "idx", "--path", "emptydir"], "train-images-idx3-ubyte"),
    (["phase", "--width", "9" * 400, "--lr", "1", "--keep", "0.5"], "width must be at most 2^53"),
    (["phase-diagram", "--out", "adir.png"], "'adir.png' is a folder"),
    (["report", "emptydir"], "is not a run folder"),
    (["report", "emptyconfig"], "not a dropdyn run config"),
    (["report", "listconfig"], "not a dropdyn run config"),
    (["report", "--out", "nodir/r.html", "run"], "folder 'nodir' does not exist"),
    (["report", "--out", "emptydir", "run"], "'emptydir' is a folder"),
])
def test_user_errors_are_one_line(args, match, tmp_path, dropdyn_cli):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dup.yaml").write_text("width: 10\nwidth: 20\n")
    (tmp_path / "latin.yaml").write_bytes("width: 1 # é\n".encode("latin-1"))
    for d in ("emptydir", "adir.png", "emptyconfig", "listconfig"):
        (tmp_path / d).mkdir()
    (tmp_path / "emptyconfig" / "config.json").write_text("{}")
    (tmp_path / "listconfig" / "config.json").write_text("[1, 2]")
    if args[0] == "report" and "run" in args:
        assert dropdyn_cli("run", "teacher-student", *TS, "--out", "run").returncode == 0
    one_line(dropdyn_cli(*args), match)


def _alias_bomb(levels: int) -> str:
    """A YAML list whose last item holds 9^levels strings through aliases (a few hundred bytes)."""
    items = ['&l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    items += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("name, text, match", [
    ("bomb.yaml", f"width: {_alias_bomb(7)}\n", "setting 'width' must be an integer, got [["),
    ("sweep.yaml", f"experiment: teacher-student\ngrid: {{width: [{_alias_bomb(7)}]}}\n",
     "setting 'width' must be an integer, got [["),
    ("deep.yaml", "width: " + "[" * 100_000 + "]" * 100_000 + "\n", "deep.yaml: nested too deeply"),
    ("deep.toml", "width = " + "[" * 100_000 + "]" * 100_000 + "\n", "deep.toml: nested too deeply"),
    ("listkey.yaml", "? [a, b]\n: 1\n", "a key must be a name, got ['a', 'b']"),
    ("numberkey.yaml", "width: 5\n1: 2\n", "a key must be a name, got 1"),
])
def test_hostile_config_files_get_one_short_line(tmp_path, capsys, name, text, match):
    """Nesting that YAML aliases make exponential (9^7 strings: its repr alone is ~30 MB),
    nesting deeper than the parsers recurse, keys that are not names."""
    (tmp_path / name).write_text(text)
    command = ["sweep", str(tmp_path / name), "--store", str(tmp_path / "s")] if name == "sweep.yaml" else \
        ["run", "teacher-student", "--config", str(tmp_path / name), "--out", str(tmp_path / "r")]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and len(err) < 600, err[:2000]


def test_yaml_merge_keys_work_and_duplicates_are_still_refused(tmp_path, capsys):
    base = "experiment: teacher-student\nbase: &b {width: 20, steps: 5}\nlist:\n"
    (tmp_path / "merge.yaml").write_text(base + "  - {<<: *b, steps: 4}\n")
    assert main(["sweep", str(tmp_path / "merge.yaml"), "--store", str(tmp_path / "s"), "--no-progress"]) == 0
    config = json.loads(next((tmp_path / "s" / "teacher-student").glob("*/config.json")).read_text())["config"]
    assert (config["width"], config["steps"]) == (20, 4)  # merged, and overridden
    (tmp_path / "dup.yaml").write_text(base + "  - {<<: *b, steps: 4, steps: 3}\n")
    assert main(["sweep", str(tmp_path / "dup.yaml"), "--store", str(tmp_path / "s")]) == 2
    assert "duplicate key 'steps'" in capsys.readouterr().err


@pytest.mark.parametrize("args, match", [
    (["sme-order", "--replicas", "1000000000"], "1,000,000,000 replicas of 1,020 parameters needs about"),
    (["teacher-student", "--n-train", "1000000000"], "1,000,001,000 samples of dimension 10 needs about"),
    (["convergence", "--phase", "I", "--widths", "20,100000000000", "--replicas", "1", "--time", "0.1",
      "--n-train", "10", "--n-test", "10"], "1 of 2 widths failed (first: InputError: width 100000000000"),
])
def test_sizes_beyond_the_machine_are_refused_before_allocating(tmp_path, capsys, args, match):
    """Named by the setting, checked against this machine's memory (24 GiB here: each asks for ≥ 89 GiB);
    a child run refused so fails its parent in one line too."""
    assert main(["run", *args, "--out", str(tmp_path / "r"), "--no-progress", "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert match in err and "GiB, more than the" in err and err.count("\n") == 1


def test_an_allocation_that_fails_anyway_gets_one_line(monkeypatch, capsys):
    """What no check foresaw: torch's CPU allocator raises a RuntimeError, CUDA's an OutOfMemoryError."""
    import dropdyn.phase

    for error, match in [
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                      "you tried to allocate 4080000000000 bytes. Error code 12 (Cannot allocate memory)"),
         "out of memory: an allocation of 3.8e+03 GiB failed; the settings ask for more than this machine holds"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
                                "79.1 GiB"), "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB."),
        (MemoryError(), "out of memory: an allocation failed; the settings"),
    ]:
        def fail(*a, error=error, **k):
            raise error

        monkeypatch.setattr(dropdyn.phase, "classify", fail)
        assert main(["phase", "--width", "100", "--lr", "1", "--keep", "0.5"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dropdyn: error: {match}") and err.count("\n") == 1, err
    monkeypatch.setattr(dropdyn.phase, "classify", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is a bug: its traceback stays
        main(["phase", "--width", "100", "--lr", "1", "--keep", "0.5"])


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """The CLI catches the input-error type, not every ValueError: a genuine bug is not hidden."""
    import dropdyn.phase

    def broken(*a, **k):
        raise ValueError("a bug, not an input error")

    monkeypatch.setattr(dropdyn.phase, "classify", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["phase", "--width", "100", "--lr", "1", "--keep", "0.5"])


def test_broken_pipe_is_quiet(store):
    p = subprocess.run(f"{sys.executable} -m dropdyn.cli runs list --json --store {store} | head -c 1",
                       shell=True, capture_output=True, text=True)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


# --- the Python API --------------------------------------------------------------------------------------------

X = torch.randn(5, 3, dtype=torch.float64)
Z, Y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, dtype=torch.float64)


@pytest.mark.parametrize("call, match", [
    (lambda: dropdyn.simulate("gd", X.to(torch.complex128), Z, Y, lr=0.1, keep=1, steps=1), "must be real"),
    (lambda: dropdyn.simulate("gd", X, Z.to(torch.complex128), Y, lr=0.1, keep=1, steps=1), "must be real"),
    (lambda: dropdyn.simulate("gd", X, Z, Y, lr=True, keep=1, steps=1), "lr must be a finite positive number"),
    (lambda: dropdyn.simulate("gd", X, Z, Y, lr=0.1, keep=True, steps=1), "keep must be a number in"),
    (lambda: dropdyn.simulate("dropout", X, Z, Y, lr=0.1, keep=0.5, steps=1, seed="abc"), "seed must be"),
    (lambda: dropdyn.simulate("dropout", X, Z, Y, lr=0.1, keep=0.5, steps=1, seed=2**64), "seed must be"),
    (lambda: dropdyn.simulate("gd", X, Z, Y, lr=0.1, keep=1, steps=1, device="tpu"), "unknown device 'tpu'"),
    (lambda: __import__("dropdyn.phase").phase.family_phase(float("nan"), 0.5), "exponent a must be a finite"),
    (lambda: dropdyn.data.teacher_student(dim=3, teacher_width=2, n_train=-1, n_test=5,
                                          generator=torch.Generator()), "n_train must be an integer >= 1"),
    (lambda: dropdyn.data.mean_field_init(10**12, 10, generator=torch.Generator()), "GiB, more than the"),
    (lambda: dropdyn.sme_dynamics.simulate_sme("sme1", X.float(), Z, Y, lr=0.1, keep=0.5, steps=1), "share one dtype"),
    (lambda: dropdyn.sme_dynamics.simulate_sme("sme1", X, Z[:0], Y[:0], lr=0.1, keep=0.5, steps=1), "N >= 1"),
    (lambda: dropdyn.sme_dynamics.simulate_sme("sme1", X.tolist(), Z, Y, lr=0.1, keep=0.5, steps=1), "torch tensor"),
    (lambda: dropdyn.sme_dynamics.simulate_sme("sme1", X, Z, Y, lr=0.1, keep=0.5, steps=1, generator=3), "Generator"),
    (lambda: dropdyn.simulate("gd", X, Z, Y, lr=0.1, keep=1, steps=1, divergence_threshold=-1.0),
     "divergence_threshold must be a finite positive number, got -1.0"),
    (lambda: dropdyn.sme_dynamics.simulate_sme("gd", X, Z, Y, lr=0.1, keep=0.5, steps=1,
                                               divergence_threshold=float("nan")), "divergence_threshold must be"),
])
def test_api_bad_input_names_the_argument(call, match):
    import dropdyn.data
    import dropdyn.sme_dynamics  # noqa: F401

    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is missing")
def test_cuda_without_cuda_is_an_input_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        dropdyn.simulate("gd", X, Z, Y, lr=0.1, keep=1, steps=1, device="cuda")


def test_particles_that_require_grad_are_detached():
    res = dropdyn.simulate("gd", X.clone().requires_grad_(), Z, Y, lr=0.1, keep=1, steps=2)
    assert res.arrays()["particles"].shape == (5, 3) and not res.particles.requires_grad


def test_alignment_refuses_bad_batches():
    from torch import nn

    from dropdyn.noise_geometry import alignment

    net = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3))
    ce = nn.functional.cross_entropy
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(6, 3\)"):
        alignment(net, ce, torch.randn(6, 3), torch.randint(0, 3, (6,)), samples=3)
    with pytest.raises(ValueError, match="same number"):
        alignment(net, ce, torch.randn(6, 4), torch.randint(0, 3, (5,)), samples=3)
    with pytest.raises(ValueError, match="same number"):
        alignment(net, ce, torch.randn(0, 4), torch.randint(0, 3, (0,)), samples=3)
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        alignment(net, ce, torch.randn(6, 4), torch.randint(0, 3, (6,)), samples=3)


# --- numerics against independent references -------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_flatness_and_top_eigenvalue_with_mse_and_cross_entropy(loss):
    from torch import nn

    from dropdyn.curvature import flatness

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 2, dtype=torch.float64) if loss == "mse" else torch.randint(0, 2, (20,))
    fn = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()
    res = flatness(net, fn, x, y, probes=400)
    net.eval()
    params = list(net.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def f(theta):
        parts = torch.split(theta, [p.numel() for p in params])
        named = {n: t.reshape(p.shape) for (n, p), t in zip(net.named_parameters(), parts, strict=True)}
        return fn(torch.func.functional_call(net, named, (x,)), y)

    H = torch.autograd.functional.hessian(f, flat)  # dense reference
    eig = torch.linalg.eigvalsh(H)
    assert abs(res["top_eigenvalue"] - float(eig[-1])) < 1e-6 * max(1.0, abs(float(eig[-1])))
    assert abs(res["trace"] - float(H.trace())) < 5 * res["trace_se"] + 1e-9


def test_wasserstein2_is_exact_unless_sliced_is_asked_for():
    from dropdyn.metrics import wasserstein2

    g = torch.Generator().manual_seed(0)
    X = torch.randn(6000, 11, generator=g, dtype=torch.float64)
    Y = X + 2.58 / 11**0.5  # a shift: W2 is exactly the shift's length, 2.58
    assert abs(wasserstein2(X[:300], Y[:300]) - 2.58) < 1e-9  # exact, any size that fits
    sliced = wasserstein2(X[:300], Y[:300], method="sliced")
    assert sliced < 2.58 * 0.6  # a different, smaller quantity
    with pytest.raises(ValueError, match="unknown W2 method 'auto'"):
        wasserstein2(X, Y, method="auto")
    with pytest.raises(ValueError, match="method='sliced' is the cheap"):
        wasserstein2(torch.zeros(10**6, 2), torch.zeros(10**6, 2))
