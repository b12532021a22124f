"""Regenerate every committed figure of docs/ and the numbers of docs/results.md.

    python scripts/figures.py [--only NAME ...] [--store DIR] [--threads N]   (or: make figures [ONLY=NAME])

Each recipe is one ``dropdyn run`` with the settings below. Its figures are copied into
docs/ under the names the pages use, and its theory rows and scalar summary are recorded in
docs/results.json, from which docs/results.md is written. ``--only`` re-runs some recipes
and keeps the recorded results of the others. Recipes marked ``gpu`` run with ``--device
cuda``: without CUDA, a full run skips them (saying so) and ``--only`` refuses them.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass
class Recipe:
    experiment: str
    settings: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # run folder's file → docs/ file
    page: str = ""  # the docs page that discusses it
    gpu: bool = False  # runs with --device cuda (its settings say so)


# the widths; a cell stops where steps·L·n² passes 2.1e9 (about 200 s of one width on 2 cores)
WIDE = {"widths": "250,500,1000,2000,4000", "max_work": 2.1e9}
DEEP_PHASE = {"": {}, "-iid": {"init": "iid"}, "-relu": {"activation": "relu"},
              "-relu-max-norm": {"activation": "relu", "max_norm": 1.0},
              "-wide": WIDE, "-relu-wide": {"activation": "relu", "depths": "1,2", **WIDE},
              "-relu-max-norm-wide": {"activation": "relu", "max_norm": 1.0, "depths": "1,2", **WIDE}}
RECIPES = {
    "teacher-student": Recipe("teacher-student", {}, {"risk.png": "teacher_student_risk.png",
                                                      "gap.png": "teacher_student_gap.png"}, "teacher-student.md"),
    **{f"convergence-{p}": Recipe("convergence", {"phase": p}, {"convergence.png": "convergence_III.png"} if p == "III"
                                  else {}, "phase-diagram.md") for p in ("I", "II", "III", "IV", "V")},
    # phase III over long horizons: is the pathwise rate uniform in time?
    **{f"convergence-III-T{T}": Recipe("convergence", {"phase": "III", "time": T, "records": 50}, {},
                                       "phase-diagram.md") for T in (10, 100)},
    "paper-teacher-student": Recipe("paper-teacher-student", {"diagnostics_every": 250},
                                    {"losses.png": "paper_ts_losses.png", "distances.png": "paper_ts_distances.png",
                                     "scaling.png": "paper_ts_scaling.png"}, "phase-diagram.md"),
    "phase-sweep": Recipe("phase-sweep", {"executor": "processes", "workers": 2},
                          {"phase_diagram.png": "phase_sweep.png"}, "phase-diagram.md"),
    **{f"deep-phase{suffix}": Recipe("deep-phase", {"executor": "processes", "workers": 2, **extra},
                                     {"deep_phase.png": f"deep_phase{suffix.replace('-', '_')}.png"},
                                     "phase-diagram.md") for suffix, extra in DEEP_PHASE.items()},
    "mnist-binary": Recipe("mnist-binary", {}, {"mnist_binary.png": "mnist_binary.png"}, "phase-diagram.md"),
    "paper-mnist": Recipe("paper-mnist", {}, {"mnist.png": "paper_mnist.png",
                                              "distances.png": "paper_mnist_distances.png"}, "phase-diagram.md"),
    "sharpness": Recipe("sharpness", {}, {"sharpness.png": "sharpness.png"}, "phase-diagram.md"),
    "sharpness-bypass": Recipe("sharpness-bypass", {}, {"bypass.png": "sharpness_bypass.png"}, "phase-diagram.md"),
    "sharpness-gap": Recipe("sharpness-gap", {}, {"gap.png": "sharpness_gap.png",
                                                  "sharpness.png": "sharpness_gap_trajectories.png"},
                            "phase-diagram.md"),
    "sharpness-phases": Recipe("sharpness-phases", {}, {"trajectories.png": "sharpness_phases.png"},
                               "phase-diagram.md"),
    "srivastava": Recipe("srivastava", {}, {"srivastava.png": "srivastava.png"}, "practice.md"),
    "alignment": Recipe("alignment", {}, {"alignment.png": "alignment.png", "variance_flatness.png":
                                          "variance_flatness.png", "noise_comparison.png": "noise_comparison.png"},
                        "alignment.md"),
    "sme-trajectories": Recipe("sme-trajectories", {}, {"sme_trajectories.png": "sme_trajectories.png"}, "sme.md"),
    "sme-order": Recipe("sme-order", {"replicas": 10000, "lrs": "0.2,0.1,0.05", "keeps": "0.9"},
                        {"sme_order.png": "sme_order.png"}, "sme.md"),
    "sme-generalisation": Recipe("sme-generalisation", {}, {"sme_generalisation.png": "sme_generalisation.png"},
                                 "sme.md"),
    # on one GPU: the weak order resolved with 100,000 replicas, and phase II's timing beside the CPU's
    "sme-order-gpu": Recipe("sme-order", {"device": "cuda", "replicas": 100000},
                            {"sme_order.png": "sme_order_gpu.png"}, "sme.md", gpu=True),
    "convergence-II-gpu": Recipe("convergence", {"phase": "II", "device": "cuda"}, {}, "phase-diagram.md", gpu=True),
}


UNJUDGED = "— (recorded before the rows had verdicts: re-run the recipe)"


def command(recipe: Recipe) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.settings.items())
    return f"dropdyn run {recipe.experiment} {flags}".strip()


def run_recipe(name: str, recipe: Recipe, store: Path) -> dict:
    import dropdyn
    from dropdyn.lab.report import theory_rows
    from dropdyn.runs import scalar_summary

    t0 = time.perf_counter()
    path = dropdyn.run(recipe.experiment, root=store, progress=sys.stderr.isatty(), **recipe.settings)
    seconds = time.perf_counter() - t0
    run = dropdyn.load(path)
    for src, dst in recipe.figures.items():
        shutil.copyfile(path / src, DOCS / dst)
    return {"command": command(recipe), "page": recipe.page, "figures": sorted(recipe.figures.values()),
            "date": date.today().isoformat(), "seconds": round(seconds, 1), "threads": run.meta.get("threads"),
            "machine": machine(recipe),
            "theory": [list(r) for r in theory_rows(recipe.experiment, run.config, run.summary)],
            "summary": {k: v for k, v in scalar_summary(run.summary).items() if not k.endswith("seconds")}}


def machine(recipe: Recipe) -> str:
    cpu = f"{platform.machine()}, {os.cpu_count()} logical CPUs"
    if not recipe.gpu:
        return cpu
    import torch

    return f"{torch.cuda.get_device_name()} ({cpu})"


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cell(text: str) -> str:
    """Text for a Markdown table cell: one line, its pipes and opening brackets escaped (so
    that maths such as ∇V[μ](x) is not a link)."""
    return str(text).replace("\n", " ").replace("|", "\\|").replace("[", "\\[")


def write_markdown(results: dict) -> str:
    lines = ["# Results of the committed figures",
             "",
             "Generated by `make figures` (`scripts/figures.py`) from the runs below; do not edit by hand. Each",
             "entry gives the command, the machine and wall time, the theory's prediction beside the",
             "measurement with the verdict — whether they agree, within what tolerance (the rows",
             "`dropdyn report` shows) — and every scalar of the run's `summary.json`.",
             "The pages linked discuss them.", ""]
    for name in RECIPES:
        if name not in results:
            continue
        r = results[name]
        figs = ", ".join(f"[{f}]({f})" for f in r["figures"]) or "—"
        lines += [f"## {name}", "",
                  f"`{r['command']}` — {r['date']}, {r['seconds']:.0f} s on {r['machine']}, "
                  f"{r['threads']} thread(s). Figures: {figs}. Discussed in [{r['page']}]({r['page']}).", ""]
        if r["theory"]:
            lines += ["| quantity | theory | measured | verdict |", "|---|---|---|---|"]
            lines += [f"| {' | '.join(cell(c) for c in (*row, UNJUDGED)[:4])} |" for row in r["theory"]] + [""]
        lines += ["<details><summary>summary.json (scalars)</summary>", "", "| key | value |", "|---|---:|"]
        lines += [f"| `{cell(k)}` | {cell(fmt(v))} |" for k, v in r["summary"].items()] + ["", "</details>", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, choices=list(RECIPES), metavar="NAME",
                   help=f"recipes to re-run (default: all; none: only rewrite results.md): {', '.join(RECIPES)}")
    p.add_argument("--store", default="runs/figures", help="store for the runs (default: runs/figures)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: dropdyn's choice)")
    args = p.parse_args(argv)
    import torch

    from dropdyn.threads import default_threads, set_threads

    set_threads(args.threads or default_threads())
    record = DOCS / "results.json"
    results = json.loads(record.read_text()) if record.exists() else {}
    from dropdyn.lab.store import atomic_write_bytes

    cuda = torch.cuda.is_available()
    if args.only and not cuda and any(RECIPES[n].gpu for n in args.only):
        print(f"figures: {', '.join(n for n in args.only if RECIPES[n].gpu)} need(s) CUDA, which is not available "
              f"here", file=sys.stderr)
        return 2
    for name in list(RECIPES) if args.only is None else args.only:
        if RECIPES[name].gpu and not cuda:
            print(f"figures: {name}: skipped (needs CUDA)", file=sys.stderr, flush=True)
            continue
        print(f"figures: {name}: {command(RECIPES[name])}", file=sys.stderr, flush=True)
        results[name] = run_recipe(name, RECIPES[name], Path(args.store))
        atomic_write_bytes(record, (json.dumps(results, indent=1) + "\n").encode())  # each recipe kept at once
        atomic_write_bytes(DOCS / "results.md", write_markdown(results).encode())
    atomic_write_bytes(DOCS / "results.md", write_markdown(results).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
