"""Every code block of the README and of docs/ works as written: Python blocks run, `dropdyn`
command lines parse (arguments and experiment settings included), sweep files load, and every
relative link points at a file of the repository."""

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from dropdyn.cli import build_parser
from dropdyn.lab.experiment import get
from dropdyn.sweep import make_sweep

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(lang: str) -> list[tuple[Path, str]]:
    return [(p, code) for p in PAGES for code in re.findall(rf"```{lang}\n(.*?)```", p.read_text(), flags=re.S)]


def ids(items) -> list[str]:
    return [f"{p.relative_to(ROOT)}#{i}" for i, (p, _) in enumerate(items)]


PYTHON = blocks("python")
COMMANDS = [(p, line) for p, code in blocks("bash") for line in code.replace("\\\n", " ").splitlines()
            if line.startswith("dropdyn ")]
YAML = blocks("yaml")
# markdown links to files (a path with a suffix or a folder)
LINKS = [(p, target) for p in PAGES for target in re.findall(r"\]\(([\w./-]+(?:\.\w+|/))(?:#[\w-]*)?\)", p.read_text())]
# every "[text](target)" of a page, outside code: a target that is no file, anchor or URL is maths
# that Markdown renders as a link (∇V[μ](x) must be written ∇V\[μ](x))
ANY_LINK = re.compile(r"(?<!\\)\[[^\]`]*\]\(([^)`]*)\)")


def test_every_page_has_code_checked():
    assert PYTHON and COMMANDS and YAML and LINKS


@pytest.mark.parametrize(("page", "code"), PYTHON, ids=ids(PYTHON))
def test_python_block_runs(page, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write run folders write them here
    exec(compile(code, str(page), "exec"), {"__name__": "docs"})


def placeholder(argv: list[str]) -> bool:
    """A synopsis line (``[--width N …]``, ``list|show``) rather than a command to type."""
    return any(c in arg for arg in argv for c in "[]|…") or any(arg.isupper() and len(arg) > 1 for arg in argv)


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=ids(COMMANDS))
def test_command_line_parses(page, line):
    argv = shlex.split(line, comments=True)[1:]
    if placeholder(argv):
        pytest.skip("a synopsis, not a command")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help exits 0; a wrong flag or value exits 2
        assert e.code == 0, f"{page.name}: {line}"
        return
    if args.command == "run" and (getattr(args, "device", None) != "cuda" or torch.cuda.is_available()):
        # the settings are valid for the experiment, not only well-formed
        exp = get(args.experiment)
        exp.resolve({f.name: getattr(args, f.name) for f in dataclasses.fields(exp.Config)
                     if getattr(args, f.name) is not None})


@pytest.mark.parametrize(("page", "text"), YAML, ids=ids(YAML))
def test_sweep_file_loads(page, text):
    sweep = make_sweep(yaml.safe_load(text), name="docs", where=page.name)
    assert sweep.keys


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p.name}->{t}" for p, t in LINKS])
def test_relative_link_exists(page, target):
    assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_maths_renders_as_a_link(page):
    text = re.sub(r"```.*?```|`[^`]*`", "", page.read_text(), flags=re.S)
    target = re.compile(r"https?://\S+|#[\w-]+|[\w./-]+(\.\w+|/)(#[\w-]*)?")  # a URL, an anchor, a file
    bad = [t for t in ANY_LINK.findall(text) if not target.fullmatch(t) and not (page.parent / t).is_file()]
    assert not bad, f"{page.name}: {bad}"
