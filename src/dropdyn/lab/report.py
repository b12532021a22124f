"""``dropdyn report``: one self-contained HTML page (figures embedded as data URIs) for a
run folder, a sweep (``STORE/sweeps/NAME``) or a whole store.

For each run it shows the theory's prediction beside the measurement (each experiment's
``theory`` rows: e.g. ``dropdyn phase``'s answer for the run's (n, τ, q), the fitted
convergence rates, the phase diagram's agreement), the figures, the summary, the config
and the versions.
A small script marks the page with ``data-figures``/``data-loaded`` once it has loaded,
so a browser (and the tests, in headless Chromium) can tell that every figure decoded.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .._checks import InputError
from .experiment import get, registry
from .index import RunIndex, scalar_summary
from .settings import typed
from .store import atomic_write_bytes, is_run_folder, read_json, regular_file

KEY = re.compile(r"[0-9a-f]{10}")  # a sweep point's store key (``store.run_key``)

MAX_RUNS = 200  # runs drawn in full in one page; the rest are listed

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.3em 0}
section{border-top:2px solid #ddd;margin-top:2em}.ok{color:#070}.bad{color:#b00}code{font-size:12px}
details{margin:.4em 0}.scroll{overflow-x:auto;max-width:100%}"""
SCRIPT = """<script>window.addEventListener('load',function(){var im=Array.from(document.images);
document.body.dataset.figures=im.length;
document.body.dataset.loaded=im.filter(function(i){return i.complete&&i.naturalWidth>0}).length;
im.forEach(function(i){if(!(i.complete&&i.naturalWidth>0)){var p=document.createElement('p');
p.className='bad';p.textContent='figure failed to load: '+i.alt;i.after(p)}});});</script>"""
# The script inserts text only (textContent, never HTML): every string from disk reaches the
# page through html.escape, so a file name or a summary value cannot become markup or script.


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _e(v)


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def theory_rows(experiment: str, config: dict, summary: dict) -> list[tuple[str, str, str, str]]:
    """(quantity, the theory's prediction, the measurement, the verdict) for one run: the
    experiment's own ``theory`` rows, or its scalar slopes and orders where it declares none."""
    exp = get(experiment)
    if exp.theory is not None:
        return exp.theory(typed(exp.Config, config), summary)
    return [(k, "—", _fmt(v), "— (no prediction)") for k, v in scalar_summary(summary).items()
            if k.startswith(("slope", "order"))]


def _figures(folder: Path) -> str:
    out = []
    for png in sorted(p for p in folder.glob("*.png") if regular_file(p)):  # no link out of the folder, no FIFO
        data = base64.b64encode(png.read_bytes()).decode()
        out.append(f'<figure><img alt="{_e(png.name)}" src="data:image/png;base64,{data}"><figcaption>'
                   f"{_e(png.name)}</figcaption></figure>")
    return "".join(out)


def _run_section(folder: Path, title: str | None = None) -> str:
    meta = read_json(folder / "config.json")
    if not is_run_folder(folder):
        raise InputError(f"{folder / 'config.json'}: not a dropdyn run config (a JSON object with 'experiment' "
                         "and 'config')")
    summary = read_json(folder / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    exp = meta["experiment"]
    parts = [f"<section><h2>{_e(title or exp)}</h2><p><code>{_e(folder)}</code></p>"]
    try:
        rows = theory_rows(exp, meta["config"], summary)
    except (KeyError, TypeError, ValueError) as e:  # an older, partial or foreign summary: say so, keep the rest
        rows = [("theory vs measurement", "—", f"unavailable ({type(e).__name__}: {e})", "—")]
    if rows:
        parts.append("<h3>Theory and measurement</h3>" + _table(rows, ("quantity", "theory", "measured", "verdict")))
    parts.append(_figures(folder))
    flat = scalar_summary(summary)
    parts.append("<details><summary>summary</summary>" + _table(list(flat.items())) + "</details>")
    parts.append("<details><summary>config</summary>" + _table(list(meta["config"].items())) + "</details>")
    parts.append("<details><summary>versions</summary>" + _table(list(meta.get("versions", {}).items()))
                 + "</details></section>")
    return "".join(parts)


def _sweep_section(folder: Path) -> str:
    from .sweep import Sweep, collect

    spec = read_json(folder / "sweep.json")
    if not (isinstance(spec, dict) and spec.get("experiment") in registry() and isinstance(spec.get("keys"), list)
            and isinstance(spec.get("name"), str) and isinstance(spec.get("base"), dict)
            and all(isinstance(k, str) and KEY.fullmatch(k) for k in spec["keys"])
            and isinstance(spec.get("points"), list) and len(spec["points"]) == len(spec["keys"])):
        raise InputError(f"{folder / 'sweep.json'}: not a dropdyn sweep file (experiment, points and 10-hex-digit "
                         "keys)")
    root = folder.parent.parent
    index = {r["id"]: r for r in RunIndex(root).rows(experiment=spec["experiment"])}
    configs = [index.get(f"{spec['experiment']}/{k}", {}).get("params", {}) for k in spec["keys"]]
    sweep = Sweep(spec["experiment"], spec["name"], spec["base"], spec["points"], configs, spec["keys"])
    rows = collect(sweep, root) if all(configs) else []
    # the top-level results first (e.g. a cell's theory and empirical phase), then nested ones, at most 12
    rest = sorted({k for r in rows for k in r} - {"point", "status", "run_id", "key", "error", *sweep.swept},
                  key=lambda k: (k.count("."), k))
    cols = ["point", "status", *sweep.swept, *rest[:12]]
    parts = [f"<section><h2>sweep {_e(spec['name'])} ({_e(spec['experiment'])}, {len(spec['keys'])} points)</h2>",
             "<h3>Results</h3><div class=scroll>", _table([tuple(r.get(c) for c in cols) for r in rows], tuple(cols)),
             "</div>", _against_setting(sweep.swept, rest, rows), "</section>"]
    for i, key in enumerate(spec["keys"][:MAX_RUNS]):
        run = root / spec["experiment"] / key
        if (run / "config.json").exists():
            parts.append(_run_section(run, f"point {i}: {spec['points'][i]}"))
    return "".join(parts)


def _against_setting(swept: list[str], results: list[str], rows: list[dict]) -> str:
    """Up to four of the points' top-level numeric results plotted against the first swept
    setting with numeric values, as an embedded PNG ("" where there is no such setting, or
    fewer than two of its values)."""
    import io
    import math

    from .._plot import subplots

    def numeric(key):
        return all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                   and math.isfinite(r[key]) for r in rows)

    x = next((k for k in swept if rows and numeric(k)), None)
    ys = [k for k in results if "." not in k and k != "seconds" and numeric(k)][:4]
    if x is None or not ys or len({r[x] for r in rows}) < 2:
        return ""
    fig, axes = subplots(1, len(ys), figsize=(3.2 * len(ys), 2.8), squeeze=False)
    for ax, y in zip(axes[0], ys, strict=True):
        ax.plot(*zip(*sorted((r[x], r[y]) for r in rows), strict=True), "o-")
        ax.set_xlabel(x)
        ax.set_title(y, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f"<h3>Results against {_e(x)}</h3><figure><img alt=\"results against {_e(x)}\" "
            f"src=\"data:image/png;base64,{data}\"></figure>")


def write_report(path: Path, out: Path | None = None) -> Path:
    """Write the report of ``path`` (run folder, sweep folder or store) to ``out``
    (default ``path/report.html``); returns ``out``."""
    from .._version import __version__

    path = Path(path)
    if (path / "config.json").exists():
        title, body = f"run {path.name}", _run_section(path)
    elif (path / "sweep.json").exists():
        title, body = f"sweep {path.name}", _sweep_section(path)
    elif (path / "index.sqlite").exists():
        index = RunIndex(path)
        rows = [(r, index.folder(r["id"])) for r in index.rows(status="complete") if not r["sweep"]]
        title = f"store {path}"  # runs outside the store (absolute ids, tampered ones) are not followed
        body = "".join(_run_section(folder, r["id"]) for r, folder in rows[:MAX_RUNS]
                       if folder is not None and is_run_folder(folder))
        sweeps = sorted((path / "sweeps").glob("*/sweep.json"))
        body += "".join(f"<p>sweep <b>{_e(s.parent.name)}</b>: report it with <code>dropdyn report "
                        f"{_e(s.parent)}</code></p>" for s in sweeps)
    else:
        raise InputError(f"{str(path)!r} is not a run folder (config.json), a sweep folder (sweep.json) "
                         "or a store (index.sqlite)")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style>"
            f"{SCRIPT}</head><body><h1>dropdyn report: {_e(title)}</h1><p>dropdyn {_e(__version__)}</p>"
            f"{body}</body></html>")
    out = Path(out) if out is not None else path / "report.html"
    if out.is_dir():
        raise InputError(f"report --out {str(out)!r} is a folder; give an HTML file name")
    if not out.parent.is_dir():
        raise InputError(f"report --out: folder {str(out.parent)!r} does not exist")
    atomic_write_bytes(out, page.encode("utf-8", "replace"))  # (a path that is no UTF-8 shows as "?")
    return out
