"""Cases of the adversarial audit and the newcomer's first day (each named by its item):
every one failed before its fix."""

import sqlite3

import numpy as np
import pytest
import torch

import dropdyn
from dropdyn import InputError
from dropdyn.lab.index import RunIndex

TINY = dict(width=20, steps=4, records=2)


def test_2_an_index_damaged_past_its_first_page_is_rebuilt_not_a_traceback(tmp_path):
    path = dropdyn.run("teacher-student", root=tmp_path, **TINY)
    index = tmp_path / "index.sqlite"
    con = sqlite3.connect(index)
    con.execute("PRAGMA journal_mode = DELETE")
    con.executemany("INSERT INTO runs (id, key, experiment, params, status) VALUES (?, 'k', 'e', '{}', 'failed')",
                    [(f"pad/{i}-" + "x" * 200,) for i in range(400)])  # pages beyond the first
    con.commit()
    con.close()
    data = bytearray(index.read_bytes())
    data[4096 * 3:4096 * 3 + 2048] = b"\xff" * 2048  # a torn write in the middle
    index.write_bytes(bytes(data))
    again = dropdyn.run("teacher-student", root=tmp_path, **{**TINY, "seed": 1})
    ids = {r["id"] for r in RunIndex(tmp_path).rows()}
    assert {RunIndex(tmp_path).run_id(p) for p in (path, again)} <= ids
    assert list(tmp_path.glob("index.sqlite.corrupt-*"))  # set aside, rebuilt from the folders


def test_8_a_zero_byte_index_is_rebuilt_from_the_folders(tmp_path):
    dropdyn.run("teacher-student", root=tmp_path, **TINY)
    (tmp_path / "index.sqlite").write_bytes(b"")
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    assert len(RunIndex(tmp_path).rows()) == 1


def test_8_a_full_disk_does_not_set_a_healthy_index_aside(tmp_path, monkeypatch):
    dropdyn.run("teacher-student", root=tmp_path, **TINY)

    def full(self):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunIndex, "_open", full)
    with pytest.raises(sqlite3.OperationalError):
        RunIndex(tmp_path).finish("x/y", "k", "e", {}, {})
    assert (tmp_path / "index.sqlite").exists() and not list(tmp_path.glob("index.sqlite.corrupt-*"))


@pytest.mark.parametrize("settings, match", [
    (dict(a=float("nan")), "a must be a number in \\[0, ∞\\), got nan"),
    (dict(a=float("inf")), "a must be a number in \\[0, ∞\\), got inf"),
    (dict(a=500.0), "τ = c_lr·n\\^\\(−a\\) = 0 at width 500"),
    (dict(time=1e15), "more than the 1e\\+08 a run may take"),
])
def test_4_9_a_cell_that_cannot_run_is_refused_before_any_work(settings, match):
    with pytest.raises(InputError, match=match):
        dropdyn.run("phase-cell", **{"widths": "500,1000", **settings})


@pytest.mark.parametrize("experiment, settings, match", [
    ("convergence", dict(phase="I", a=100.0), "τ = 1.61e-240 \\(width 250\\) is 6.22e\\+239 steps"),
    ("mnist-binary", dict(small_lr_times_width=1e-300), "the small-lr regime\\) is .* steps, more than"),
    ("teacher-student", dict(seed=2**62), "seed must be at most 2\\^40"),
])
def test_4_9_10_sizes_exponents_and_seeds_that_cannot_run(experiment, settings, match):
    with pytest.raises(InputError, match=match):
        dropdyn.run(experiment, **settings)


def test_10_the_critical_rule_takes_the_largest_seed():
    from dropdyn.limits import simulate_limit

    g = np.random.default_rng(0)
    X = g.normal(size=(30, 3))
    res = simulate_limit("IV", X, g.normal(size=(10, 2)), g.normal(size=10), time=0.2, h=0.02, alpha=0.5, beta=0.3,
                         seed=2**63 - 1)
    assert res.diverged_at_step is None


def test_12_a_run_diverging_from_its_start_draws_its_figures(tmp_path):
    path = dropdyn.run("teacher-student", root=tmp_path, label_noise=1e300, **TINY)
    assert (path / "risk.png").is_file() and (path / "gap.png").is_file()


def test_17_numpy_integers_and_integral_floats_are_integers(tmp_path, dropdyn_cli):
    path = dropdyn.run("teacher-student", root=tmp_path, width=np.int64(20), steps=np.int32(4), records=2)
    assert dropdyn.load(path).config["width"] == 20
    p = dropdyn_cli("phase", "--width", "1e6", "--lr", "0.1", "--keep", "0.5")
    assert p.returncode == 0 and "width n=1000000" in p.stdout


def test_18_identical_runs_write_identical_svg_figures(tmp_path):
    a = dropdyn.run("teacher-student", root=tmp_path, **TINY)
    b = dropdyn.run("teacher-student", root=tmp_path, **TINY)
    for name in ("risk.svg", "gap.svg", "risk.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_19_a_missing_store_is_named_and_a_read_creates_no_index(tmp_path, dropdyn_cli):
    with pytest.raises(InputError, match="no store 'typo': no such folder"):
        dropdyn.runs.table("typo")
    (tmp_path / "plain").mkdir()
    assert dropdyn_cli("runs", "list", "--store", str(tmp_path / "plain")).returncode == 0
    assert list((tmp_path / "plain").iterdir()) == []


def test_25_list_settings_take_real_lists(tmp_path):
    (tmp_path / "c.yaml").write_text("widths: [40, 80]\nb_values: [0]\na_values: [0, 1]\ntime: 0.3\nreplicas: 1\n")
    cfg = dropdyn.lab.experiment.get("phase-sweep").resolve(file=tmp_path / "c.yaml")
    assert (cfg.widths, cfg.a_values, cfg.b_values) == ((40, 80), (0.0, 1.0), (0.0,))
    assert dropdyn.lab.experiment.get("phase-cell").resolve({"widths": [80, 40]}).widths == (40, 80)
    with pytest.raises(InputError, match="setting 'widths' must be an integer, got \\[40\\]"):
        dropdyn.lab.experiment.get("phase-cell").resolve({"widths": [[40], [80]]})


def test_1_a_claim_without_a_heartbeat_expires_and_a_running_run_renews_its_own(tmp_path, monkeypatch):
    """A running row whose process exists (pid reuse) or cannot be checked (another host) but
    whose heartbeat is older than CLAIM_TTL has lost its claim; a run renews its heartbeat."""
    import dataclasses
    import os
    import time

    from dropdyn.lab import index as index_module
    from dropdyn.lab.experiment import get

    idx = RunIndex(tmp_path)
    idx.reindex()
    stale = "2000-01-01T00:00:00.000+00:00"
    for rid, pid, host in (("e/reused", os.getppid(), None), ("e/lost-node", 12345, "another-host")):
        idx.start(rid, "k", "e", {})
        con = sqlite3.connect(tmp_path / "index.sqlite")
        con.execute("UPDATE runs SET pid = ?, host = COALESCE(?, host), heartbeat = ? WHERE id = ?",
                    (pid, host, stale, rid))
        con.commit()
        con.close()
        assert idx.claim(rid, "k", "e", {}), rid  # expired: claimed, not waited for forever
    fresh = index_module.now()
    con = sqlite3.connect(tmp_path / "index.sqlite")
    con.execute("UPDATE runs SET pid = 12345, host = 'another-host', heartbeat = ? WHERE id = 'e/lost-node'", (fresh,))
    con.commit()
    con.close()
    assert not idx.claim("e/lost-node", "k", "e", {})  # a live claim elsewhere is respected

    monkeypatch.setattr(index_module, "HEARTBEAT", 0.05)
    beats = []

    def slow(cfg, ctx):
        time.sleep(0.4)
        beats.append(RunIndex(tmp_path).rows(experiment="teacher-student")[0]["heartbeat"])
        return get("teacher-student").compute(cfg, ctx)

    exp = dataclasses.replace(get("teacher-student"), compute=slow)
    exp.run(root=tmp_path, **TINY)
    (row,) = RunIndex(tmp_path).rows(experiment="teacher-student")
    assert beats[0] > row["started"] and row["status"] == "complete"


def test_1_a_waiting_point_says_what_it_waits_for(tmp_path, capsys, monkeypatch):
    from dropdyn.lab import sweep as sweep_module

    idx = RunIndex(tmp_path)
    idx.reindex()
    calls = {"n": 0}

    def claim(*args, **kw):  # another process holds the point twice, then lets it go
        calls["n"] += 1
        return calls["n"] > 2

    monkeypatch.setattr(RunIndex, "claim", claim)
    monkeypatch.setattr(sweep_module.time, "sleep", lambda s: None)
    sweep = sweep_module.make_sweep({"experiment": "teacher-student", "base": TINY, "grid": {"seed": [3]}})
    (task,) = sweep_module._tasks(sweep, tmp_path, threads=1)
    assert sweep_module.run_point(task)["status"] == "complete"
    err = capsys.readouterr().err
    assert err.count("is being computed by") == 1 and "its claim to expire 150 s after its last heartbeat" in err


def test_26_a_sweep_by_its_file_or_name_and_its_curves_in_one_frame(tmp_path):
    from dropdyn.lab.sweep import run_sweep

    f = tmp_path / "two.yaml"
    f.write_text("experiment: teacher-student\nbase: {width: 20, steps: 4, records: 2}\ngrid: {seed: [1, 2]}\n")
    store = tmp_path / "store"
    run_sweep(dropdyn.sweep.load_sweep(f), store)
    by_file, by_name = dropdyn.sweep.results(f, store), dropdyn.sweep.results("two", store)
    assert list(by_file["seed"]) == list(by_name["seed"]) == [1, 2] and set(by_file["status"]) == {"complete"}
    long = dropdyn.sweep.curves(str(f), store)
    metrics = long[long["table"] == "metrics"]
    assert set(metrics["seed"]) == {1, 2} and set(metrics["point"]) == {0, 1}
    assert len(metrics) == 2 * len(dropdyn.load(store / by_file["run_id"][0]).metrics)
    for bad, match in ((tmp_path / "nope", "no sweep"), (3, "a sweep is a Sweep, a sweep file or a sweep's name")):
        with pytest.raises(InputError, match=match):
            dropdyn.sweep.results(bad, store)


def test_7_a_report_and_the_index_read_only_regular_files_of_the_folder(tmp_path):
    import os
    import threading

    from dropdyn.lab.report import write_report

    path = dropdyn.run("teacher-student", root=tmp_path / "store", **TINY)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")
    (path / "leak.png").symlink_to(secret)
    os.mkfifo(path / "x.png")
    os.mkfifo(path / "extra.csv")
    done = []
    worker = threading.Thread(target=lambda: done.append((write_report(path).read_text(), dropdyn.load(path),
                                                          RunIndex(tmp_path / "store").reindex())), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "a FIFO in the run folder hung the report, the loader or the index"
    page, run, _ = done[0]
    assert "leak.png" not in page and "x.png" not in page and "risk.png" in page
    assert "extra" not in run.tables and "metrics" in run.tables
    fifo = tmp_path / "store" / "teacher-student" / "fifo-run"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")
    worker = threading.Thread(target=lambda: done.append(RunIndex(tmp_path / "store").reindex()), daemon=True)
    worker.start()
    worker.join(60)
    assert len(done) == 2


def test_15_a_deleted_folder_is_missing_and_a_damaged_sweep_file_is_one_line(tmp_path, dropdyn_cli):
    import json
    import shutil

    from dropdyn.lab.report import write_report
    from dropdyn.lab.sweep import run_sweep

    path = dropdyn.run("teacher-student", root=tmp_path, **TINY)
    shutil.rmtree(path)
    (row,) = RunIndex(tmp_path).rows()
    assert row["status"] == "missing" and "is gone" in row["error"]
    sweep = dropdyn.sweep.make_sweep({"experiment": "teacher-student", "name": "s", "base": TINY,
                                      "grid": {"seed": [1]}})
    run_sweep(sweep, tmp_path)
    spec_path = tmp_path / "sweeps" / "s" / "sweep.json"
    spec = json.loads(spec_path.read_text())
    del spec["name"]
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(InputError, match="not a dropdyn sweep file"):
        write_report(spec_path.parent)
    p = dropdyn_cli("report", str(spec_path.parent))
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_14_16_workers_scheduler_and_digits_that_cannot_be_had(tmp_path, monkeypatch):
    from dropdyn.data import binary_mnist
    from dropdyn.lab.sweep import run_sweep
    from dropdyn.threads import available_cpus

    sweep = dropdyn.sweep.make_sweep({"experiment": "teacher-student", "base": TINY, "grid": {"seed": [1]}})
    too_many = 4 * len(available_cpus()) + 1
    with pytest.raises(InputError, match=f"workers must be at most .* got {too_many}"):
        run_sweep(sweep, tmp_path, executor="processes", workers=too_many)
    with pytest.raises(InputError, match="cannot reach the Dask scheduler notanaddress: missing port"):
        run_sweep(sweep, tmp_path, executor="dask", scheduler="notanaddress")
    no_nines = torch.rand(6, 784, dtype=torch.float64), torch.tensor([4, 4, 4, 7, 7, 7])
    monkeypatch.setattr("dropdyn.data.mnist", lambda source, path: no_nines)
    with pytest.raises(InputError, match="hold 3 image\\(s\\) of digit 4 and 0 of digit 9"):
        binary_mnist((4, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=-5), "batch_size must be an integer >= 1"),
    (dict(momentum=1.5), "momentum must be a number in \\[0, 1\\)"),
    (dict(decay=0.0), "decay must be a number in \\(0, 1\\]"),
    (dict(labels=[0, 1, 12, 3]), "labels must be classes in \\[0, 3\\), got values in \\[0, 12\\]"),
    (dict(labels=[0.0, 1.0, 2.0, 0.0]), "labels must be an integer tensor"),
    (dict(labels=[0, 1]), "labels must have shape \\(4,\\)"),
])
def test_11_training_settings_and_labels_are_checked(kw, match):
    from dropdyn.nets import DropoutMLP, train

    net = DropoutMLP([5, 4, 3], keep_input=1.0, keep_hidden=0.5)
    labels = torch.tensor(kw.pop("labels", [0, 1, 2, 0]))
    with pytest.raises(InputError, match=match):
        train(net, torch.randn(4, 5), labels, epochs=1, **kw)


@pytest.mark.parametrize("settings, match", [(dict(datasets=""), "setting 'datasets' must not be empty"),
                                             (dict(momentum=-0.1), "momentum must be a number"),
                                             (dict(decay=2.0), "decay must be a number")])
def test_11_srivastava_refuses_what_would_run_wrong(settings, match):
    with pytest.raises(InputError, match=match):
        dropdyn.run("srivastava", **settings)


def test_13_a_damaged_child_point_fails_its_parent_in_one_line(tmp_path, dropdyn_cli):
    settings = ["--phase", "V", "--widths", "100,200", "--time", "0.5", "--n-train", "20", "--n-test", "20",
                "--records", "2", "--store", str(tmp_path)]
    assert dropdyn_cli("run", "convergence", *settings).returncode == 0
    (point,) = [p for p in (tmp_path / "convergence-width").iterdir() if (p / "summary.json").is_file()][:1]
    (point / "summary.json").write_text("{damaged")
    p = dropdyn_cli("run", "convergence", *settings, "--out", str(tmp_path / "again"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "dropdyn runs rm convergence-width/" in p.stderr


def test_21_messages_stay_one_short_line_and_name_the_cause(tmp_path, monkeypatch):
    from pathlib import Path

    from dropdyn.lab.experiment import get

    with pytest.raises(InputError) as info:
        get("teacher-student").resolve({f"k{i}": 1 for i in range(5000)})
    assert "and 4990 more" in str(info.value) and len(str(info.value)) < 1000
    config = tmp_path / "c.yaml"
    config.write_text("width: 20\n")
    real = Path.stat

    def denied(self, *args, **kw):  # (root passes any permission: the refusal is simulated)
        if self == config:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kw)

    monkeypatch.setattr(Path, "stat", denied)
    with pytest.raises(InputError, match="c.yaml' cannot be read: permission denied"):
        get("teacher-student").resolve(file=config)


@pytest.mark.parametrize("every", [1, 3])
def test_20_a_recorded_step_whose_full_risk_passes_the_limit_is_the_divergence(every):
    """The first step whose state's full risk exceeds divergence_threshold·(1 + R₀) is the
    divergence when that step is recorded (before: found one step later, by the next step's
    forward pass); between records the next forward pass finds it, as documented."""
    g = torch.Generator().manual_seed(0)
    X, Z, y = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((30, 3), (10, 2), (10,)))
    free = dropdyn.simulate("gd", X, Z, y, lr=60.0, keep=1.0, steps=12, divergence_threshold=1e300)
    risks = free.risk.tolist()
    limit = 3.0 * (1 + risks[0])
    first = next(k for k, r in enumerate(risks) if r > limit)
    run = dropdyn.simulate("gd", X, Z, y, lr=60.0, keep=1.0, steps=12, divergence_threshold=3.0, record_every=every)
    assert run.diverged_at_step == (first if first % every == 0 else first + 1), (risks, first)


def test_6_a_folder_name_that_is_no_utf8_breaks_nothing(tmp_path, dropdyn_cli):
    import json
    import os
    import shutil

    from dropdyn.lab.report import write_report

    store = tmp_path / "store"
    path = dropdyn.run("teacher-student", root=store, **TINY)
    shutil.copytree(path, os.fsdecode(os.fsencode(store / "teacher-student") + b"/copy-\xff"))  # renamed by hand
    assert RunIndex(store).reindex() == 1
    p = dropdyn_cli("runs", "list", "--json", "--store", str(store))
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 1
    assert write_report(store).is_file()
    with pytest.raises(InputError, match="is not UTF-8 text"):
        dropdyn.run("teacher-student", out=os.fsdecode(os.fsencode(tmp_path) + b"/out-\xfe"), root=store, **TINY)


@pytest.mark.parametrize("call, match", [
    (lambda: dropdyn.draw_masks(0.5, 10**6, (10**6,)), "cannot fit in memory|GiB"),
    (lambda: dropdyn.draw_masks(0.5, 2, (-5,)), "mask shape entry must be an integer >= 0"),
    (lambda: dropdyn.MaskStream(0.5, (3,), seed="x"), "seed must be an integer"),
    (lambda: dropdyn.mean_field_init(10, 3, generator=torch.Generator(), dtype=torch.int64),
     "dtype must be a floating-point torch dtype"),
    (lambda: dropdyn.output_gap([0.0, 1.0], [0.0, 1.0]), "outputs must be torch tensors"),
    (lambda: __import__("dropdyn.nets").nets.DropoutMLP([10, 10**12, 10]), "cannot fit in memory|GiB"),
    (lambda: dropdyn.simulate("gd", torch.zeros(1, 3).expand(10**10, 3), torch.zeros(4, 2), torch.zeros(4), lr=0.1,
                              keep=0.5, steps=1), "cannot fit in memory|GiB"),
])
def test_4_17_sizes_and_types_refused_before_any_allocation(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_29_a_loaded_run_prints_in_a_few_lines(tmp_path):
    text = repr(dropdyn.load(dropdyn.run("teacher-student", root=tmp_path, **TINY)))
    assert text.startswith("Run('teacher-student' at ") and "metrics (3 rows)" in text and len(text) < 1000


def test_4_19_snapshots_are_sized_and_a_linked_index_is_refused(tmp_path):
    X, Z, y = torch.zeros(1000, 3), torch.zeros(4, 2), torch.zeros(4)
    with pytest.raises(InputError, match="snapshots of the particles needs about"):
        dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=10**9, snapshot_every=1)
    elsewhere = tmp_path / "elsewhere.sqlite"
    store = tmp_path / "store"
    dropdyn.run("teacher-student", root=tmp_path / "other", **TINY)
    (tmp_path / "other" / "index.sqlite").rename(elsewhere)
    store.mkdir()
    (store / "index.sqlite").symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    with pytest.raises(InputError, match="is a symbolic link"):
        dropdyn.run("teacher-student", root=store, **TINY)
    assert elsewhere.read_bytes() == before and RunIndex(store).rows() == []


def test_4_the_coupled_runs_draw_their_masks_as_they_go(monkeypatch):
    """A MaskStream given as masks is drawn from step by step: the same run as the pre-drawn
    masks, bit for bit; convergence-width and phase-cell no longer pre-draw (take is never called)."""
    import torch

    from dropdyn.masks import MaskStream, draw_masks

    g = torch.Generator().manual_seed(0)
    X, Z, y = torch.randn(2, 30, 3, generator=g), torch.randn(10, 2, generator=g), torch.randn(10, generator=g)
    given = dropdyn.simulate("dropout", X, Z, y, lr=0.5, keep=0.4, steps=12, masks=draw_masks(0.4, 12, (2, 30), 7))
    lazy = dropdyn.simulate("dropout", X, Z, y, lr=0.5, keep=0.4, steps=12, masks=MaskStream(0.4, (2, 30), 7))
    assert torch.equal(given.particles, lazy.particles)
    with pytest.raises(InputError, match="a mask stream must have shape \\(2, 30\\)"):
        dropdyn.simulate("dropout", X, Z, y, lr=0.5, keep=0.4, steps=2, masks=MaskStream(0.4, (30,), 7))

    def refuse(self, steps):
        raise AssertionError("masks pre-drawn")

    monkeypatch.setattr(MaskStream, "take", refuse)
    for name, settings in (("convergence-width", dict(phase="III", width=200, time=0.05, n_train=10, n_test=10,
                                                      replicas=1, records=2)),
                           ("phase-cell", dict(widths=(40, 80), time=0.2, replicas=1, n_train=10, n_test=10))):
        cfg = dropdyn.lab.experiment.get(name).resolve(settings)
        dropdyn.lab.experiment.get(name).compute(cfg, dropdyn.lab.Context())
