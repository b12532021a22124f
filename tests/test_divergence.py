"""A diverging run is a result: every experiment finishes (exit 0), keeps its records up to
the divergence and says in ``summary.json`` at which step each dynamics diverged."""

import json
import math

import numpy as np
import pytest
import torch

import dropdyn

SMALL_SME = dict(width=6, train_size=60, replicas=4)


def test_infinite_risk_counts_as_divergence():
    """Finite particles whose risk overflows float32 (R ≈ 1e40): diverged at step 1, not a run of inf risks."""
    X = torch.zeros(100, 3, dtype=torch.float32)
    X[:, 0], X[:, 1] = 1e20, 1.0
    Z, y = torch.ones(4, 2), torch.zeros(4)
    res = dropdyn.simulate("gd", X, Z, y, lr=1e-30, keep=1.0, steps=5)
    assert res.diverged_at_step == 1
    assert bool(torch.isfinite(res.particles).all())


def test_no_samples_is_an_input_error():
    with pytest.raises(ValueError, match=r"inputs must have shape \(n_samples, d\) with at least one sample, "
                                         r"got \(0, 2\)"):
        dropdyn.simulate("gd", torch.zeros(5, 3), torch.zeros(0, 2), torch.zeros(0), lr=0.1, keep=1.0, steps=2)


def test_on_grid_lines_up_runs_that_stopped_at_different_steps():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g, dtype=torch.float64)
    Z, y = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    ok = dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=1.0, steps=10, record_every=2)
    bad = dropdyn.simulate("gd", X, Z, y, lr=1e4, keep=1.0, steps=10, record_every=2)
    assert ok.diverged_at_step is None and bad.diverged_at_step is not None
    grid = dropdyn.engine.record_steps(10, 2)
    assert grid.tolist() == [0, 2, 4, 6, 8, 10]
    a, b = ok.on_grid("risk", grid), bad.on_grid("risk", grid)
    assert np.isfinite(a).all() and a.shape == b.shape == (6,)
    assert np.isnan(b[grid >= bad.diverged_at_step]).all() and np.isfinite(b[grid < bad.diverged_at_step]).all()


@pytest.mark.parametrize("lr", ["20", "100", "1e6"])
def test_teacher_student_cli_finishes_a_diverging_run(tmp_path, lr, dropdyn_cli):
    out = tmp_path / "r"
    p = dropdyn_cli("run", "teacher-student", "--width", "50", "--steps", "200", "--lr", lr, "--out", out,
                    "--no-progress")
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    steps = s["diverged_at_step"]
    assert set(steps) == {"dropout", "ram", "penalty", "gd"} and all(isinstance(k, int) for k in steps.values())
    metrics = np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)
    for v, k in steps.items():  # records up to the divergence, NaN after it
        risk = metrics[f"{v}_train_risk"]
        assert np.isfinite(risk[metrics["step"] < k]).all() and np.isnan(risk[metrics["step"] >= k]).all()
    assert (out / "risk.png").stat().st_size > 10_000


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_mnist_binary_diverging(tmp_path):
    from dropdyn.experiments import mnist_binary

    cfg = mnist_binary.Config(input_size=7, width=100, lr=1e5, time=1e6, small_width=50, small_time=1.0,
                              small_lr_times_width=1e4, records=5)
    s = _summary(mnist_binary.run(cfg, tmp_path / "m"))
    assert all(isinstance(v["diverged_at_step"], int) for k, v in s["final"].items() if k.startswith("practical"))


def test_convergence_diverging(tmp_path):
    from dropdyn.experiments import convergence

    cfg = convergence.Config(phase="V", widths="100,200", time=1e4, c_lr=1e3, n_train=20, n_test=20, records=3)
    s = _summary(convergence.run(cfg, tmp_path / "c", root=tmp_path / "store"))
    assert all(f["diverged"] is not None and f["output_gap"] is None for f in s["final"])


def test_srivastava_diverging(tmp_path):
    from dropdyn.experiments import srivastava

    cfg = srivastava.Config(hidden=32, epochs=2, datasets="digits", mc_repeats=1, lr=1e6)
    s = _summary(srivastava.run(cfg, tmp_path / "s"))
    assert isinstance(s["diverged_at_step"]["digits/no dropout"], int)
    assert s["final_test_error"]["digits/no dropout"] is None


def test_sme_experiments_diverging(tmp_path):
    from dropdyn.experiments import sme_generalisation, sme_order, sme_trajectories

    s = _summary(sme_order.run(sme_order.Config(**SMALL_SME, lrs="20,10", keeps="0.5", time=40.0, substeps=2,
                                                batches=2), tmp_path / "o"))
    assert isinstance(s["diverged_at_step"]["sme1/p=0.5/lr=10"], int)
    s = _summary(sme_trajectories.run(sme_trajectories.Config(**SMALL_SME, settings="5:0.5", time=50.0, records=5),
                                      tmp_path / "t"))
    assert all(isinstance(k, int) for k in s["settings"]["lr=5,p=0.5"]["diverged_at_step"].values())
    s = _summary(sme_generalisation.run(sme_generalisation.Config(**SMALL_SME, settings="5:0.5", time=50.0,
                                                                  records=5), tmp_path / "g"))
    assert isinstance(s["settings"]["lr=5,p=0.5"]["dropout"]["diverged_at_step"], int)


def test_nets_train_stops_at_a_non_finite_loss():
    from dropdyn.nets import DropoutMLP, train

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
    net = DropoutMLP([5, 16, 3], keep_hidden=0.5)
    steps = []
    k = train(net, x, y, epochs=5, lr=1e12, momentum=0.0, batch_size=16, generator=g, on_step=steps.append)
    assert isinstance(k, int) and steps == list(range(1, k))
    assert train(DropoutMLP([5, 16, 3]), x, y, epochs=1, lr=0.01, batch_size=16) is None


def test_phase_cell_and_sharpness_record_divergence(tmp_path):
    from dropdyn.experiments import phase_cell, sharpness

    s = _summary(phase_cell.run(phase_cell.Config(a=0, b=0, widths="100,200", c_lr=1e4, time=1e6, replicas=2),
                                tmp_path / "c"))
    assert isinstance(s["diverged_at_step"]["100"]["dropout"], int) and s["distances"]["100"]["V"] is None
    s = _summary(sharpness.run(sharpness.Config(width=30, steps=50, points=3, lr_min=1.0, lr_max=1e4, keeps="0.5"),
                               tmp_path / "s"))
    assert isinstance(s["diverged_at_step"]["gd"]["lr=1e+04"], int)


def _same_run(a, b):
    assert a.diverged_at_step == b.diverged_at_step
    for name in ("particles", "steps", "risk", "test_risk", "snapshots", "snapshot_steps"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name


@pytest.mark.parametrize("variant", dropdyn.VARIANTS)
@pytest.mark.parametrize("lr", [0.5, 20.0, 1e6])
def test_checking_divergence_every_few_steps_changes_nothing(variant, lr, compaction):
    # check_every > 1 keeps the last good state on the device and finds a divergence at the next check
    # (here up to 24 steps late); the run must be the one that checks every step, bit for bit
    g = torch.Generator().manual_seed(0)
    X0 = torch.randn(2, 60, 3, generator=g, dtype=torch.float64)
    Z, y = torch.randn(20, 2, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    kw = dict(lr=lr, keep=0.5, steps=50, seed=1, test_inputs=Z[:5], test_targets=y[:5])
    for extra in (dict(record_every=25), dict(record_every=7, snapshot_every=5)):
        every_step = dropdyn.simulate(variant, X0, Z, y, check_every=1, **kw, **extra)
        for check_every in (8, 64):
            _same_run(every_step, dropdyn.simulate(variant, X0, Z, y, check_every=check_every, **kw, **extra))


def test_checking_divergence_every_few_steps_in_the_critical_limit():
    g = torch.Generator().manual_seed(2)
    X0, Z, y = torch.randn(80, 3, generator=g), torch.randn(15, 2, generator=g), torch.randn(15, generator=g)
    for alpha, h, time in [(0.5, 0.05, 2.0), (500.0, 50.0, 2000.0)]:  # the second diverges at step 4
        runs = [dropdyn.simulate_limit("IV", X0, Z, y, time=time, h=h, alpha=alpha, beta=0.25, seed=3,
                                       record_every=1000, check_every=c) for c in (1, 8)]
        _same_run(*runs)
    assert runs[0].diverged_at_step == 4


def test_a_run_stops_at_the_first_step_whose_risk_exceeds_the_threshold():
    # step k diverges when the full risk of the state it makes, recorded (here every step), is
    # above divergence_threshold · (1 + R_0); the run keeps the state after k − 1.
    # The two thresholds tell (1 + R_0) from 1/(1 + R_0) and from (2 + R_0): the risks here
    # (R_0 = 0.45, …, R_13 = 368, R_14 = 2148, R_15 = 1.2·10⁴) sit far from every limit
    g = torch.Generator().manual_seed(0)
    X0, Z, y = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((30, 4), (10, 3), (10,)))
    R = dropdyn.simulate("gd", X0, Z, y, lr=8.0, keep=1.0, steps=30, divergence_threshold=1e300).risk.tolist()
    for t in (300.0, 1000.0):
        first = next(k for k in range(1, 31) if R[k] > t * (1 + R[0]))
        run = dropdyn.simulate("gd", X0, Z, y, lr=8.0, keep=1.0, steps=30, divergence_threshold=t)
        assert run.diverged_at_step == first and run.steps[-1] == first - 1
        assert run.risk[-1] == R[first - 1]


@pytest.mark.parametrize("simulator", ["engine", "sme"])
def test_a_divergence_at_the_last_step_is_found_between_checks(simulator):
    # the run's last step is always read: a run of exactly s steps that diverges at step s,
    # recorded only at 0 and checked every 100 steps, still says so and keeps step s − 1
    from dropdyn.sme_dynamics import simulate_sme

    g = torch.Generator().manual_seed(0)
    X0, Z, y = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((4, 4), (7, 3), (7,)))

    def run(steps, every):
        if simulator == "engine":
            return dropdyn.simulate("dropout", 3 * X0, Z, y, lr=10.0, keep=0.3, steps=steps, seed=0,
                                    record_every=1000, check_every=every)
        return simulate_sme("dropout", 3 * X0, Z, y, lr=10.0, keep=0.3, steps=steps, replicas=3, seed=0,
                            record_every=1000, check_every=every)

    s = run(300, 1).diverged_at_step
    assert s is not None and s > 2
    last, between = run(s, 1), run(s, 100)
    assert between.diverged_at_step == last.diverged_at_step == s
    assert between.steps.tolist() == [0, s - 1] and torch.equal(between.particles, last.particles)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_loops_finiteness_tests_agree_with_isfinite(dtype):
    # loop.finite and loop.within take fewer kernels than torch.isfinite; on every combination
    # of special values (the extremes of the dtype, subnormals, ±inf, NaN) they agree with it,
    # within on the non-negative tensors it is given (a mean of squares, absolute values), and
    # finite but for finite entries whose sum overflows (it counts them as diverged)
    import itertools

    from dropdyn.loop import finite, within

    info = torch.finfo(dtype)
    special = [0.0, -0.0, 1.0, -2.5, info.max, -info.max, info.tiny / 4, math.inf, -math.inf, math.nan]
    for pair in itertools.product(special, repeat=2):
        x = torch.tensor(pair, dtype=dtype)
        overflows = bool(torch.isfinite(x).all()) and abs(sum(float(v) for v in pair)) > info.max  # (max, max)
        assert bool(finite(x)) == (bool(torch.isfinite(x).all()) and not overflows), pair
        assert bool(finite(x[:1], x[1:])) == bool(finite(x)), pair  # several tensors: their sums added
        for limit in (1.0, float(info.max), math.inf):
            y = x.abs()
            assert bool(within(y, limit)) == bool((torch.isfinite(y) & (y <= limit)).all()), (pair, limit)


@pytest.mark.parametrize("steps, every, found, diverged, want", [
    (10, 3, None, None, [0, 3, 6, 9, 10]),  # no divergence: every 3 steps and the last
    (10, 3, 1, 1, [0]),                     # the first step diverges: step 0 once, not twice
    (10, 2, 4, 4, [0, 2, 3]),               # the step before the divergence, not recorded on the cadence
    (10, 3, 6, 5, [0, 3, 4]),               # found late (at a check): the state before step 5
    (10, 3, 5, 4, [0, 3]),                  # found late, the step before already recorded
    (10, 1, 5, 5, [0, 1, 2, 3, 4]),
])
def test_run_loop_records_on_its_cadence_and_before_a_divergence(steps, every, found, diverged, want):
    from dropdyn.loop import run_loop

    advanced, recorded = [], []

    class Counter:  # its state is the step it is at
        def start(self):
            return 0

        def advance(self, state, k, due):
            advanced.append((k, due))
            return (diverged - 1, diverged) if k == found else (k, None)

        def record(self, state, k):
            assert state == k
            recorded.append(k)

    assert run_loop(Counter(), steps, record_every=every) == (diverged - 1 if diverged else steps, diverged)
    assert recorded == want
    last = found or steps
    assert advanced == [(k, k % every == 0 or k == steps) for k in range(1, last + 1)]


def test_the_divergence_watch_reads_the_host_on_its_cadence():
    """Default: every step on the CPU, read at once; with every = 4 the device keeps the last
    good state and the first failed step, and the host learns of it at the next multiple of 4
    or when it asks."""
    from dropdyn.loop import DivergenceWatch

    watch = DivergenceWatch(None, "cpu")
    assert watch.every == 1 and not watch.on_device
    assert not DivergenceWatch(1, "cpu").on_device and DivergenceWatch(1, "cpu", on_device=True).on_device
    assert DivergenceWatch(2, "cpu").on_device
    yes, no = torch.tensor(True), torch.tensor(False)
    old, new = (torch.tensor([1.0]),), (torch.tensor([2.0]),)
    assert watch.keep(1, yes, new, old, read=False) == (new, None)
    assert watch.keep(2, no, new, old, read=False) == (old, 2)
    watch = DivergenceWatch(4, "cpu")
    assert watch.on_device
    state, seen = watch.keep(1, yes, new, old, read=False)
    assert torch.equal(state[0], new[0]) and seen is None
    state, seen = watch.keep(2, no, (torch.tensor([3.0]),), state, read=False)
    assert torch.equal(state[0], new[0]) and seen is None  # the last good state, kept on the device
    state, seen = watch.keep(3, yes, (torch.tensor([4.0]),), state, read=False)
    assert torch.equal(state[0], new[0]) and seen is None  # a later good step does not clear it
    assert watch.read(3, read=True) == 2 and watch.read(5, read=False) is None and watch.read(4, read=False) == 2


class Idle:
    """A driver of the run loop that does nothing (its state is None)."""

    def start(self):
        return None

    def advance(self, state, k, due):
        return None, None

    def record(self, state, k):
        pass


def test_progress_bars_only_when_asked_for(capsys):
    from dropdyn.loop import run_loop

    def go(steps, progress):
        run_loop(Idle(), steps, record_every=1, progress=progress)
        return capsys.readouterr().err

    assert go(5, False) == "" and go(0, True) == ""
    assert "/1 [" in go(1, True) and "/5 [" in go(5, True)


def test_a_disabled_run_bar_shows_nothing_creates_no_tqdm_lock_and_counts():
    """A run without progress gets a NoBar: no tqdm (whose lock is a multiprocessing
    semaphore a killed sweep worker would leak), the same calls, and the count."""
    from dropdyn.loop import NoBar, run_bar, run_loop

    bar = run_bar(7, "x", enabled=False)
    assert isinstance(bar, NoBar) and (bar.n, bar.total) == (0, 7)

    with bar:
        run_loop(Idle(), 7, record_every=2, progress=bar, desc="part")
        bar.set_description("d")
    assert bar.n == 7


def test_a_long_library_call_shows_a_bar_and_a_call_inside_an_experiment_does_not(capsys, monkeypatch):
    """By default a call shows its bar once it has run AUTO_DELAY seconds (here 0: at once), a
    call with progress=False never; inside an experiment's computation the experiment owns the
    bar, so the library calls it makes show none of their own."""
    import dropdyn
    from dropdyn import loop

    monkeypatch.setattr(loop, "AUTO_DELAY", 0.0)
    g = torch.Generator().manual_seed(0)
    X, Z, y = torch.randn(20, 3, generator=g), torch.randn(8, 2, generator=g), torch.randn(8, generator=g)
    dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=30)
    assert "gd:" in capsys.readouterr().err  # (the bar, cleared at its end)
    dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=30, progress=False)
    assert capsys.readouterr().err == ""
    token = loop.OWNED.set(True)
    try:
        dropdyn.simulate("gd", X, Z, y, lr=0.1, keep=0.5, steps=30)
    finally:
        loop.OWNED.reset(token)
    assert capsys.readouterr().err == ""
