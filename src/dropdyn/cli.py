"""``dropdyn`` command line. Bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sqlite3
import sys
import types
import typing
from pathlib import Path

from ._checks import InputError
from .lab import host
from .lab.experiment import get, registry
from .lab.settings import PARSERS, as_text, constraint, integer


class UsageError(Exception):
    """A command-line mistake (reported in one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(message)


def _threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: the physical cores that other processes leave free)")


def _add_common(p: argparse.ArgumentParser) -> None:
    _threads_flag(p)
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings (flags override it)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: STORE/<experiment>/<time>-<hash>)")
    p.add_argument("--store", metavar="DIR", default="runs", help="run store: folders and index (default runs)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    _progress_flags(p)


def _progress_flags(p: argparse.ArgumentParser) -> None:
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    bar.add_argument("--progress", action="store_true",
                     help="show the progress bar even where stderr is no terminal (a batch job's log)")


def _show_progress(args) -> bool:
    """The bar is shown on a terminal unless --no-progress, and anywhere with --progress."""
    return args.progress or (not args.no_progress and sys.stderr.isatty())


def _config_flags(p: argparse.ArgumentParser, config_cls) -> None:
    """One flag per field of an experiment's ``Config``: ``--n-train`` for ``n_train``, with
    the field's help text and default; bool fields take ``--full`` / ``--no-full``."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        typ = hints[f.name]
        if typing.get_origin(typ) in (typing.Union, types.UnionType):
            typ = next(t for t in typing.get_args(typ) if t is not type(None))
        check = constraint(config_cls, f.name)
        notes = [check.text] if check else []
        if f.default is not None and f.default != "":
            notes.append(f"default {as_text(f.default)}")
        text = f.metadata.get("help", "") + (f" ({'; '.join(notes)})" if notes else "")
        flag = "--" + f.name.replace("_", "-")
        if typ is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:  # a list setting's text is split by the settings' own coercion
            p.add_argument(flag, dest=f.name, type=PARSERS.get(typ, str), default=None, metavar=f.name.upper(),
                           help=text.replace("%", "%%"))


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
        epilog="experiments:\n" + "\n".join(f"  {k:18s} {e.description}" for k, e in registry().items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    ph = sub.add_parser("phase", help="place (width, lr, keep) on the phase diagram and explain its limit")
    _threads_flag(ph)
    ph.add_argument("--width", type=integer, required=True, help="width n (>= 2)")
    ph.add_argument("--lr", type=float, required=True, help="learning rate τ")
    ph.add_argument("--keep", type=float, required=True, help="keep probability q")
    ph.add_argument("--factor", type=float, default=3.0,
                    help="constants within this factor of 1 count as order one (default 3)")
    ph.add_argument("--embedding", choices=("fixed", "powers"), default=None,
                    help="the family (width, lr, keep) is read in as n → ∞: fixed τ and q (default), or powers of n "
                         "read off this width")
    ph.add_argument("--exponents", metavar="A,B", default=None,
                    help="read it in the family τ = c·n^−A, q = c'·n^−B instead (the phase of that family)")
    ph.add_argument("--activation", default=None,
                    help="the network's activation: one outside the theory's assumptions (relu, softplus, identity) "
                         "gets a warning line")
    ph.add_argument("--json", action="store_true", help="print JSON")
    pd = sub.add_parser("phase-diagram", help="draw the theoretical (a, b) phase diagram")
    _threads_flag(pd)
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
    _progress_flags(sw)
    rs = sub.add_parser("runs", help="list, show or remove runs of a store; rebuild its index from the folders")
    _threads_flag(rs)
    rs.add_argument("action", choices=("list", "show", "rm", "reindex"))
    rs.add_argument("refs", nargs="*", metavar="RUN", help="run id, or a unique prefix of its id or key")
    rs.add_argument("--store", default="runs", help="run store (default runs)")
    rs.add_argument("--experiment", help="list: only this experiment")
    rs.add_argument("--status", choices=("running", "complete", "failed"), help="list: only this status")
    rs.add_argument("--sweep", help="list: only this sweep")
    rs.add_argument("--json", action="store_true", help="list: print JSON")
    rp = sub.add_parser("report", help="a self-contained HTML report of a run folder, sweep or store")
    _threads_flag(rp)
    rp.add_argument("path", help="a run folder, STORE/sweeps/NAME, or a store")
    rp.add_argument("--out", help="HTML file (default PATH/report.html)")
    run = sub.add_parser("run", help="run an experiment and write its run folder")
    exps = run.add_subparsers(dest="experiment", parser_class=_Parser, metavar="EXPERIMENT")
    for name, exp in registry().items():
        p = exps.add_parser(name, help=exp.description, description=exp.description)
        _config_flags(p, exp.Config)
        _add_common(p)
        if exp.sweeps:
            _execution_flags(p, default_executor=None)
    return ap


def _run_experiment(args) -> int:
    """The one runner (``Experiment.run``): every check before any work; the run is indexed
    as running, then complete — or failed, with the error."""
    if args.experiment is None:
        raise UsageError(f"run needs an experiment: {', '.join(registry())}")
    exp = get(args.experiment)
    host.configure()  # a step's large tensors are reused, not page-faulted in afresh (a sweep's points set it)
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(exp.Config)
                if getattr(args, f.name) is not None}
    execution = {k: getattr(args, k) for k in EXECUTION if getattr(args, k, None) is not None}
    cfg = exp.resolve(settings, args.config)
    path = exp.run(cfg, args.out, root=args.store, force=args.force, index=True,
                   progress=_show_progress(args), **execution)
    print(path)
    _headline(exp, path)
    return 0


def _headline(exp, path: Path) -> None:
    """The run in a few lines on stderr (stdout stays the folder, for scripts): its theory
    rows, or its summary's top-level numbers."""
    from .lab.report import theory_rows
    from .lab.store import read_json

    meta, summary = read_json(path / "config.json"), read_json(path / "summary.json") or {}
    try:
        rows = theory_rows(exp.name, meta["config"], summary)
    except (KeyError, TypeError, ValueError):
        rows = []
    lines = [f"  {q}: measured {m}  (theory: {t}) → {v}" for q, t, m, v in rows[:8]] or [
        f"  {k}: {v}" for k, v in summary.items() if isinstance(v, (int, float, str))][:8]
    print(f"{exp.name} ({summary.get('seconds', '?')} s, {meta.get('threads')} thread(s)):", *lines, sep="\n",
          file=sys.stderr)


def _sweep(args) -> int:
    from .lab.sweep import collect, load_sweep, run_sweep, write_table

    sweep = load_sweep(args.file)
    result = run_sweep(sweep, args.store, executor=args.executor, workers=args.workers, scheduler=args.scheduler,
                       threads=args.threads, progress=_show_progress(args))
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
    from .lab.index import RunIndex

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
    from .lab.report import write_report

    print(write_report(Path(args.path), Path(args.out) if args.out else None))
    return 0


def _phase(args) -> int:
    import json

    from .phase import classify

    if args.exponents is not None and args.embedding is not None:
        raise UsageError("give --embedding or --exponents, not both")
    embedding = args.embedding or "fixed"
    if args.exponents is not None:
        try:
            embedding = tuple(float(v) for v in args.exponents.split(","))
        except ValueError:
            raise UsageError(f"--exponents must be A,B (e.g. 0.5,0.5), got {args.exponents!r}") from None
    ph = classify(args.width, args.lr, args.keep, factor=args.factor, embedding=embedding, activation=args.activation)
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
    import io

    from ._plot import subplots
    from .lab.store import atomic_write_bytes
    from .phase import classify, draw_diagram

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
    fig, ax = subplots(figsize=(6.5, 5))
    draw_diagram(ax, marks)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight")
    atomic_write_bytes(out, buf.getvalue())
    print(out)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        _set_threads(args)
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
    except sqlite3.DatabaseError as e:  # the store's index: read-only, disk full, locked, damaged
        print(f"dropdyn: error: the run index: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError, CUDA's a subclass of it
        message = _out_of_memory(e)
        if message is None:
            raise
        print(f"dropdyn: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a sweep's says how far it got
        print(f"dropdyn: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130


def _set_threads(args) -> None:
    """``--threads`` (every command but ``sweep``, whose points each take ``--threads``): the
    count of every call of the command (default: :func:`dropdyn.threads.default_threads` now)."""
    from .threads import default_threads, set_threads

    if args.command == "sweep":
        return
    given = getattr(args, "threads", None)
    set_threads(default_threads() if given is None else given)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _out_of_memory(e: BaseException) -> str | None:
    """For an allocation that failed (settings too large for the machine: replicas, samples,
    data set size), what to print; None for any other error."""
    text = _one_line(e)
    if not (isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)  # the CPU allocator's words; CUDA's say it in GiB already
    detail = (f"an allocation of {int(asked[1]) / 2**30:.3g} GiB failed" if asked
              else text[:200] or "an allocation failed")
    return f"out of memory: {detail}; the settings ask for more than this machine holds (lower the sizes)"


if __name__ == "__main__":
    sys.exit(main())
