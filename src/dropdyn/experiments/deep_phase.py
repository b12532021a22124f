"""The empirical dropout phase diagram of deep mean-field networks (docs/phase-diagram.md
"Deeper networks"): for each depth L and each scaling family (a, b) of the two-layer
diagram, a ``deep-cell`` run — dropout against RaM, the expected step and GD over widths —
says which two-layer phase the cell behaves like. The cells are a sweep
(``dropdyn.sweep``): cells already in the store are reused, an interrupted sweep resumes, and
``--executor processes|dask`` spreads them over workers.

Default: the five phases' families (I: a = ½, b = 0; II: 5/4, 1; III: ½, ½; IV: 1, 1;
V: 0, 0) and one degenerate one (½, ¾), L = 1 (the two-layer cells, placed by the same rule:
the measured reference), 2 and 3, widths 100–400, T = ½ (minutes on 2 cores);
``--widths 250,500,1000,2000,4000`` is the size for a cluster, and ``--max-work`` caps each
cell's widths by steps·L·n² (the families with many steps stop at a smaller width).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..lab import Context, Experiment, setting, verdict
from ..lab.settings import Check, at_least, each
from ..lab.store import config_key
from ..lab.sweep import make_sweep, run_children
from . import deep_cell
from .deep_cell import agrees, behaves_like, nearest

FAMILIES = ((0.5, 0.0), (1.25, 1.0), (0.5, 0.5), (1.0, 1.0), (0.0, 0.0), (0.5, 0.75))


def _exponents(name, cells):
    for a, b in cells:
        if not (a >= 0 and b >= 0):
            raise ValueError(f"{name}: exponents must be ≥ 0, got {a:g}:{b:g}")


@dataclass
class Config(deep_cell.CellSettings):
    depths: tuple[int, ...] = setting((1, 2, 3), "hidden layers L of each diagram (L = 1: the two-layer cells, "
                                      "placed by the same rule)", each(at_least(1)))
    cells: tuple[tuple[float, float], ...] = setting(FAMILIES, "families a:b (τ = c_lr·n^−a, q = c_keep·n^−b)",
                                                     Check("A:B pairs, comma-separated, each ≥ 0", _exponents))

    def cell_settings(self) -> dict:
        """The settings shared by every cell (all but the grid)."""
        return {f.name: getattr(self, f.name) for f in fields(deep_cell.CellSettings)}

    def children(self) -> list[dict]:
        return [{"layers": L, "a": a, "b": b} for L in self.depths for a, b in self.cells]


def like_two_layers(cells: list[dict]) -> tuple[int, int]:
    """How many cells at L ≥ 2 are placed as the same family's cell at L = 1 (by the same
    rule, measured), of how many have one."""
    ref = {(c["a"], c["b"]): c["behaves_like"] for c in cells if c["layers"] == 1}
    deep = [c for c in cells if c["layers"] > 1 and (c["a"], c["b"]) in ref]
    return sum(c["behaves_like"] == ref[c["a"], c["b"]] for c in deep), len(deep)


def figure(cells: list[dict], cfg: Config):
    from matplotlib.patches import Rectangle

    from .._plot import subplots
    from ..phase import draw_diagram

    colors = {"I": "C0", "II": "C2", "III": "C1", "IV": "C3", "V": "C4", "none": "0.75"}
    fig, axes = subplots(1, 1 + len(cfg.depths), figsize=(5.2 * (1 + len(cfg.depths)), 4.8))
    draw_diagram(axes[0])
    axes[0].set_title("two layers: the theory (phase-sweep measures it)", fontsize=9)
    for ax, L in zip(axes[1:], cfg.depths, strict=True):
        mine = [c for c in cells if c["layers"] == L]
        for c in mine:
            ok = agrees(c)
            ax.add_patch(Rectangle((c["a"] - 0.1, c["b"] - 0.1), 0.2, 0.2, color=colors[c["behaves_like"]],
                                   alpha=0.75, ec="k" if ok else "red", lw=0.5 if ok else 2))
            ratio = "—" if c["ratio"] is None else f"{c['ratio']:.2f}"
            top = max(map(int, c["gaps"]))
            capped = f"\nn ≤ {top}" if top < max(cfg.widths) else ""
            ax.text(c["a"], c["b"], f"{c['behaves_like']}\n{ratio}{capped}", ha="center", va="center", fontsize=7)
        ax.set_xlim(-0.2, 1.45)
        ax.set_ylim(-0.2, 1.2)
        ax.set_xlabel("a  (τ = c·n^−a)")
        ax.set_ylabel("b  (q = c·n^−b)")
        ax.set_title(f"L = {L}: behaves like, at n = {max(cfg.widths)}\n(label: the nearest gap relative to the "
                     "output, × per width doubling)", fontsize=8)
        ax.grid(alpha=0.3)
    for name, col in colors.items():
        axes[-1].plot([], [], "s", color=col, label=name if name != "none" else "none (no gap shrinks)")
    axes[-1].plot([], [], "s", mfc="none", mec="red", label="not its two-layer phase")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def compute(cfg: Config, ctx: Context) -> dict:
    """Run (or resume) the sweep of cells in the store."""
    sweep = make_sweep({"experiment": "deep-cell", "name": f"deep-phase-{config_key(asdict(cfg))}",
                        "base": cfg.cell_settings(), "list": cfg.children()})
    cells, computed = run_children(sweep, ctx, "cells")
    return {"cells": cells, "sweep": sweep.name, "computed": computed}


def write(folder, cfg: Config, res: dict) -> dict:
    cells = [{**c, **dict(zip(("behaves_like", "ratio"), behaves_like(c, cfg), strict=True))} for c in res["cells"]]
    rows: dict = {k: [] for k in ("layers", "a", "b", "width", "compared", "output_gap", "parameter_gap",
                                  "dropout_output_rms")}
    for c in cells:
        for n, by in c["gaps"].items():
            for other, g in by.items():
                for key, val in (("layers", c["layers"]), ("a", c["a"]), ("b", c["b"]), ("width", int(n)),
                                 ("compared", other), ("output_gap", g["output"]), ("parameter_gap", g["parameters"]),
                                 ("dropout_output_rms", c["output_rms"][n])):
                    rows[key].append(val)
    folder.write_csv("gaps.csv", rows)
    folder.write_npz("arrays.npz", {"layers": np.array([c["layers"] for c in cells]),
                                    "a": np.array([c["a"] for c in cells]), "b": np.array([c["b"] for c in cells]),
                                    "behaves_like": np.array([c["behaves_like"] for c in cells])})
    folder.savefig(figure(cells, cfg), "deep_phase")
    same, compared = like_two_layers(cells)
    return {"agreement": sum(map(agrees, cells)) / len(cells), "cells": len(cells), "sweep": res["sweep"],
            "like_two_layers": same, "compared_with_two_layers": compared,
            "cells_computed": res["computed"], "cells_detail": cells, "largest_width": max(cfg.widths)}


def theory(c: dict, s: dict) -> list[tuple[str, str, str, str]]:
    rows = [("cells behaving like their two-layer phase", "all (if the diagram extends)",
             f"{s['agreement']:.0%} of {s['cells']}", verdict(s["agreement"] == 1, "every cell"))]
    if s["compared_with_two_layers"]:
        rows.append(("cells at L ≥ 2 placed as their family's cell at L = 1 (one rule, both measured)",
                     "all (if the diagram extends)", f"{s['like_two_layers']} of {s['compared_with_two_layers']}",
                     verdict(s["like_two_layers"] == s["compared_with_two_layers"], "every cell")))
    for d in s["cells_detail"]:
        rate = d["rates"].get("ram/output", {})
        slope = rate.get("slope")
        ci = rate.get("ci95") or [None, None]
        where = "" if slope is None or slope != slope else (
            f"; dropout–RaM output gap ∝ n^{slope:.2f}" + ("" if ci[0] is None or ci[0] != ci[0]
                                                           else f" [{ci[0]:.2f}, {ci[1]:.2f}]"))
        widths = sorted(d["output_rms"], key=int)
        rms = ["—" if d["output_rms"][n] is None else f"{d['output_rms'][n]:.2g}" for n in (widths[0], widths[-1])]
        scale = f"; dropout's output RMS {rms[0]} → {rms[1]}"
        variant, ratio = nearest(d, "parameters")
        if variant is not None:
            scale += f"; nearest in parameters at n = {widths[-1]}: {variant} (×{ratio:.2f} per width doubling)"
        rows.append((f"L = {d['layers']}, a = {d['a']:g}, b = {d['b']:g}", d["two_layer_theory"],
                     f"{d['behaves_like']}{where}{scale}",
                     verdict(agrees(d), "its two-layer phase; none for IV and the degenerate region")))
    return rows


EXPERIMENT = Experiment("deep-phase", "the empirical dropout phase diagram of deep mean-field networks (L = 2, 3) "
                        "beside the two-layer one.", Config, compute, write, theory, sweeps=True, order=24,
                        smoke=dict(depths=(2,), cells=((0.5, 0.5), (0.0, 0.0)), widths=(8, 16), time=0.2,
                                   replicas=1))
run = EXPERIMENT.run
