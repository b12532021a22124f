"""The run index's queries on a hand-built store: finding a run by id, prefix or key, the
store's boundary, liveness of a running row, and the rows rebuilt from the folders."""

import json
import os
import socket
import subprocess
import sys

import pytest

from dropdyn import InputError
from dropdyn.runs import RunIndex, _alive, clean_partials, scan_folders


def folder(root, run_id, config, summary=None, experiment="e"):
    path = root / run_id
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"experiment": experiment, "config": config, "started": "t0"}))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def index(tmp_path):
    """Three runs: e/aa-1 (key k1…), e/ab-2 (key k2…), f/b-3, written in that order."""
    idx = RunIndex(tmp_path)
    assert idx.reindex() == 0  # the index exists before the folders (else it would be built from them)
    for i, (rid, key) in enumerate((("e/aa-1", "k1abc"), ("e/ab-2", "k2abc"), ("f/b-3", "k3abc"))):
        folder(tmp_path, rid, {"i": i}, {"seconds": 1.0}, experiment=rid.split("/")[0])
        idx.start(rid, key, rid.split("/")[0], {"i": i})
        idx.finish(rid, key, rid.split("/")[0], {"i": i}, {"v": i})
    return idx


@pytest.mark.parametrize("ref, found", [("e/aa-1", "e/aa-1"), ("e/ab", "e/ab-2"), ("k3", "f/b-3"), ("b", "f/b-3"),
                                        ("aa", "e/aa-1")])
def test_a_run_is_found_by_its_id_a_prefix_its_key_or_its_name(index, ref, found):
    assert index.get(ref)["id"] == found


def test_an_unknown_or_ambiguous_reference_is_refused_by_name(index, tmp_path):
    with pytest.raises(InputError, match=f"^no run 'zz' in the store '{tmp_path}'$"):
        index.get("zz")
    with pytest.raises(InputError, match="^'e/a' matches 2 runs \\(e/aa-1, e/ab-2, …\\); give more of it$"):
        index.get("e/a")
    with pytest.raises(InputError, match="^'k' matches 3 runs"):
        index.get("k")
    folder(tmp_path, "e/aa", {"i": 9}, {})
    index.finish("e/aa", "k9", "e", {"i": 9}, {})
    assert index.get("e/aa")["id"] == "e/aa"  # an exact id wins over the ids it prefixes


def test_rows_filter_order_and_status(index):
    assert [r["id"] for r in index.rows()] == ["e/aa-1", "e/ab-2", "f/b-3"]  # oldest first
    assert [r["id"] for r in index.rows(experiment="e")] == ["e/aa-1", "e/ab-2"]
    assert [r["id"] for r in index.rows(key="k2abc")] == ["e/ab-2"]
    assert index.rows(status="failed") == [] and len(index.rows(status="complete")) == 3
    assert index.status("f/b-3") == "complete" and index.status("f/b") is None
    index.fail("f/b-3", "k3abc", "f", {"i": 2}, "boom")
    assert [r["id"] for r in index.rows(status="failed")] == ["f/b-3"]
    assert index.rows(run_id="f/b-3")[0]["error"] == "boom"
    assert index.rows(run_id="e/aa-1")[0]["summary"] == {"v": 0} and index.integrity() == "ok"


def test_without_a_readable_index_the_folders_answer_the_same_filters(index, monkeypatch):
    monkeypatch.setattr(RunIndex, "_read", lambda self, sql, args=(): None)
    assert [r["id"] for r in index.rows(experiment="e")] == ["e/aa-1", "e/ab-2"]
    assert [r["id"] for r in index.rows(run_id="f/b-3")] == ["f/b-3"]


def test_a_store_it_may_not_write_is_read_read_only(index, tmp_path, monkeypatch):
    """Where the store folder is not writable, the read-write connection (which may create
    or rebuild the index) is never opened, even if the index file itself is writable."""
    import dropdyn.runs as runs

    real_access = os.access
    monkeypatch.setattr(runs.os, "access", lambda p, mode: (mode != os.W_OK and real_access(p, mode))
                        if p == tmp_path else real_access(p, mode))
    monkeypatch.setattr(RunIndex, "_connect", lambda self: pytest.fail("opened the index read-write"))
    assert len(index.rows()) == 3


@pytest.mark.parametrize("params, summary", [("[1]", "{}"), ("{}", "[1]"), ("1", "2")])
def test_a_row_that_does_not_hold_json_objects_rebuilds_the_index(index, capsys, params, summary):
    index._write("UPDATE runs SET params = ?, summary = ? WHERE id = 'e/aa-1'", (params, summary))
    rows = index.rows()
    assert [r["id"] for r in rows] == ["e/aa-1", "e/ab-2", "f/b-3"] and rows[0]["params"] == {"i": 0}
    assert "holds an unreadable row (row 'e/aa-1' does not hold JSON objects)" in capsys.readouterr().err


def test_a_running_row_whose_process_is_gone_reads_as_failed(index):
    index.start("e/aa-1", "k1abc", "e", {"i": 0})
    assert index.status("e/aa-1") == "running"  # this process
    pid = dead_pid()
    index._write("UPDATE runs SET pid = ? WHERE id = 'e/aa-1'", (pid,))
    row = index.rows(run_id="e/aa-1")[0]
    assert row["status"] == "failed"
    assert row["error"] == f"process {pid} on {socket.gethostname()} ended without finishing"


def test_a_run_is_claimed_unless_a_live_process_runs_it(index):
    assert index.claim("n/1", "kn", "n", {})  # a new run
    index._write("UPDATE runs SET pid = 1 WHERE id = 'n/1'", ())  # init: alive, and not this process
    assert not index.claim("n/1", "kn", "n", {})
    index._write("UPDATE runs SET pid = ? WHERE id = 'n/1'", (dead_pid(),))
    assert index.claim("n/1", "kn", "n", {})  # its process is gone
    assert index.claim("n/1", "kn", "n", {})  # this process's own claim
    index.finish("n/1", "kn", "n", {}, {})
    assert index.claim("n/1", "kn", "n", {})  # a complete run may be re-run


def test_liveness_of_a_process():
    here = socket.gethostname()
    assert _alive(os.getpid(), here) and _alive(os.getpid(), None) and _alive(1, here)
    assert not _alive(dead_pid(), here)
    assert _alive(dead_pid(), "another-host")  # cannot be checked from here: assumed alive
    assert not _alive(None, here) and not _alive(None, "another-host")


def test_the_store_boundary(index, tmp_path):
    root = tmp_path.resolve()
    assert index.folder("e/aa-1") == root / "e" / "aa-1"
    for outside in ("../victim", "/etc", ".", "e/../..", str(tmp_path.parent / "x")):
        assert index.folder(outside) is None, outside
    assert index.run_id(tmp_path / "e" / "aa-1") == "e/aa-1"
    assert index.run_id(tmp_path.parent / "x") == (tmp_path.parent / "x").resolve().as_posix()


def test_remove_deletes_the_row_and_a_folder_inside_the_store(index, tmp_path):
    for ref, match in (("", "must name a run"), ("  ", "must name a run"),
                       ("e/aa", "'e/aa' is only the start of run 'e/aa-1'; give its full id")):
        with pytest.raises(InputError, match=match):
            index.remove(ref)
    assert len(index.rows()) == 3
    removed = index.remove("e/aa-1")
    assert removed["id"] == "e/aa-1" and removed["folder_removed"] and not (tmp_path / "e" / "aa-1").exists()
    assert [r["id"] for r in index.rows()] == ["e/ab-2", "f/b-3"]
    outside = tmp_path.parent / f"{tmp_path.name}-out"
    folder(outside.parent, outside.name, {}, {})
    index.finish(outside.as_posix(), "kout", "e", {}, {})
    assert index.remove("kout")["folder_removed"] is False and outside.exists()


def test_complete_with_key_finds_only_a_finished_folder_inside_the_store(index, tmp_path):
    assert index.complete_with_key("k1abc") == (tmp_path / "e" / "aa-1").resolve()
    assert index.complete_with_key("nope") is None
    (tmp_path / "e" / "aa-1" / "summary.json").unlink()
    assert index.complete_with_key("k1abc") is None  # the row says complete, the folder does not
    index.finish("../x", "kx", "e", {}, {})
    assert index.complete_with_key("kx") is None


def test_the_rows_rebuilt_from_the_folders(tmp_path):
    folder(tmp_path, "e/done", {"a": 1}, {"seconds": 2.5, "fit": {"slope": 1.0}, "curve": [1]})
    folder(tmp_path, "e/cut", {"a": 2})  # no summary: it did not finish
    folder(tmp_path, "e/.hidden", {"a": 3}, {})
    folder(tmp_path, "sweeps/s", {"a": 4}, {})
    (tmp_path / "e" / "junk").mkdir()
    (tmp_path / "e" / "junk" / "config.json").write_text('{"experiment": "e", "config": [1]}')
    (tmp_path / "e" / "noexp").mkdir()
    (tmp_path / "e" / "noexp" / "config.json").write_text('{"experiment": "", "config": {}}')
    (tmp_path / "sweeps" / "s" / "sweep.json").write_text(json.dumps({"experiment": "e", "keys": ["done"]}))
    (tmp_path / "sweeps" / "t").mkdir()
    (tmp_path / "sweeps" / "t" / "sweep.json").write_text(json.dumps({"experiment": "e", "keys": {"cut": 1}}))
    (tmp_path / "sweeps" / "u").mkdir()
    (tmp_path / "sweeps" / "u" / "sweep.json").write_text(json.dumps(["e/cut"]))  # neither is a sweep file
    rows = {r["id"]: r for r in scan_folders(tmp_path)}
    assert sorted(rows) == ["e/cut", "e/done"]
    done, cut = rows["e/done"], rows["e/cut"]
    assert (done["status"], done["seconds"], done["sweep"], done["error"]) == ("complete", 2.5, "s", None)
    assert done["summary"] == {"seconds": 2.5, "fit.slope": 1.0} and done["finished"].startswith("20")
    assert done["params"] == {"a": 1} and done["started"] == "t0" and done["experiment"] == "e"
    assert (cut["status"], cut["error"], cut["finished"], cut["seconds"], cut["summary"], cut["sweep"]) == (
        "failed", "no summary.json", None, None, {}, None)
    assert scan_folders(tmp_path / "missing") == [] and scan_folders(tmp_path / "e" / "done" / "config.json") == []


def test_only_partial_folders_of_dead_processes_are_cleaned(tmp_path):
    dead, live = dead_pid(), os.getpid()
    for name in (f".a.partial-{dead}-x", f".b.partial-{live}-x", ".c.partial-abc", "d"):
        (tmp_path / "e" / name).mkdir(parents=True)
    assert [p.name for p in clean_partials(tmp_path)] == [f".a.partial-{dead}-x"]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [f".b.partial-{live}-x", ".c.partial-abc", "d"]
